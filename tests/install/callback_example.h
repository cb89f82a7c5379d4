// The callback of docs/extending.md, verbatim: stops training once the training loss falls below a threshold,
// and keeps the lowest loss seen in the checkpoint so that a resumed run decides as an uninterrupted one.
#pragma once

#include <training/callback.h>
#include <training/trainer.h>

#include <algorithm>

class StopBelow : public zoo::training::Callback {
 public:
  explicit StopBelow(double threshold) : threshold_(threshold) {}
  std::string name() const override { return "stop-below"; }  // its key in state.json
  void on_epoch_end(zoo::training::Trainer& trainer, const nlohmann::json& record) override {
    lowest_ = std::min(lowest_, record["train"]["loss"].get<double>());
    if (lowest_ < threshold_) trainer.stop_after_epoch("train loss below " + std::to_string(threshold_));
  }
  nlohmann::json state() const override { return {{"lowest", lowest_}}; }
  void load_state(const nlohmann::json& state) override { lowest_ = state.at("lowest").get<double>(); }

 private:
  double threshold_, lowest_ = 1e300;
};
