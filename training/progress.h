// Progress of an epoch: a live bar on a terminal (step/total, loss, items/s, ETA), plain lines otherwise.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace zoo::training {

class Progress {
 public:
  /// `interactive`: draw a bar redrawn in place (default: when stderr is a terminal).
  Progress(std::string label, int64_t total_steps, bool interactive, bool enabled = true);
  /// After step `step` (1-based) with `items` processed so far this epoch.
  void update(int64_t step, int64_t items, double loss);
  void finish();
  static bool stderr_is_terminal();

 private:
  void draw(int64_t step, int64_t items, double loss, bool final);
  std::string label_;
  int64_t total_;
  bool interactive_, enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t next_line_step_ = 0;
  int64_t last_step_ = 0, last_items_ = 0;
  double last_loss_ = 0;
};

/// "1m05s", "12.3s"
std::string format_duration(double seconds);

}  // namespace zoo::training
