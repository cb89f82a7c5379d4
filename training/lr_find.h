// The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3;
// Lightning's Tuner.lr_find): train from the initial weights while the rate grows exponentially from `start_lr`
// to `end_lr`, stop when the smoothed loss diverges, and suggest the rate where it falls fastest.
//
//   lr_i        = start_lr * (end_lr / start_lr)^(i / (steps - 1))
//   smoothed_i  = debiased exponential average of the losses: a_i = beta a_{i-1} + (1 - beta) loss_i,
//                 smoothed_i = a_i / (1 - beta^(i+1))
//   stop        when smoothed_i > diverge * min(smoothed) or the loss is not finite
//   suggestion  the lr at the steepest descent of smoothed over log(lr), skipping the first `skip_begin` points
#pragma once

#include "datasets/dataset.h"
#include "training/trainer.h"

#include <string>
#include <vector>

namespace zoo::training {

struct LrFindOptions {
  double start_lr = 1e-7;
  double end_lr = 1.0;
  int64_t steps = 100;
  double beta = 0.98;       ///< smoothing of the loss
  double diverge = 4.0;     ///< stop when the smoothed loss exceeds this multiple of its minimum
  int64_t skip_begin = 10;  ///< points left out of the suggestion at the start (the average is still warming up)
};

struct LrFindResult {
  std::vector<double> lrs, losses, smoothed;
  double suggestion = 0;
  std::string stopped;  ///< why it ended before `steps` (divergence), or empty
};

/// Runs the test on the trainer's model (whose weights change: pass a copy) with batches of `train` in the order
/// of epoch 1 (more epochs when the steps need them). Throws std::runtime_error when the loss diverges before
/// there is anything to suggest from.
LrFindResult lr_range_test(Trainer& trainer, const datasets::Dataset& train, const LrFindOptions& options);

/// The index of the steepest descent of `smoothed` over log(lr) among points skip_begin .. n-2, or -1.
int64_t steepest_descent(const std::vector<double>& lrs, const std::vector<double>& smoothed, int64_t skip_begin);

}  // namespace zoo::training
