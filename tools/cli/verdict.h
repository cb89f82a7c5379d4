// The verdict of `zoo bench` on one row (a case at one thread count) against the speed targets.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace zoo::cli {

/// Rounds needed before a median below 1.0x can count as parity.
constexpr size_t kParityRounds = 5;

/// The median (the mean of the middle two for an even count); 0 for none.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/// slow[k] / fast[k] for each round k both have: the speed-up of each round, its two times measured back to back, so
/// that a slow spell of the machine mostly falls on both (a ratio of the two sides' medians could set one round's
/// time against another's).
inline std::vector<double> paired_ratios(const std::vector<double>& slow, const std::vector<double>& fast) {
  std::vector<double> r;
  for (size_t k = 0; k < std::min(slow.size(), fast.size()); ++k) r.push_back(slow[k] / fast[k]);
  return r;
}

/// speedups: for each measurement of the row (train, inference, latency), Python time / C++ time in every round.
///   "met"     every measurement's median speedup reaches the target;
///   "parity"  the target is 1.0x ("not slower than Python"), at least kParityRounds rounds, and every measurement
///             whose median is below 1.0 still had C++ faster in some round. Equal work on the same kernels wanders
///             between rounds by more than the difference; C++ slower in all of 5 rounds has probability 1/32
///             when both are as fast (a sign test), so only that is called slower;
///   "missed"  otherwise. A 1.3x target claims a speedup: its median must reach it.
inline std::string speedup_verdict(const std::vector<std::vector<double>>& speedups, double target) {
  bool met = true;
  for (const auto& v : speedups) met = met && median(v) >= target;
  if (met) return "met";
  bool parity = target == 1.0;
  for (const auto& v : speedups) {
    if (v.size() < kParityRounds) parity = false;
    if (parity && median(v) < target) parity = *std::max_element(v.begin(), v.end()) >= target;
  }
  return parity ? "parity" : "missed";
}

}  // namespace zoo::cli
