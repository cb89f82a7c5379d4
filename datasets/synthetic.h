// Small synthetic classification data in 1, 3 and 4 dimensions: the sheet's "data types" table made runnable.
// Every item is generated from a seed (train and test use different seeds), so a dataset is deterministic.
//
//   waveforms  [1, L]          1-D, single channel ("audio"): sine, square, sawtooth or triangle wave with a
//                              random frequency, phase and amplitude, in Gaussian noise. 4 classes.
//   shapes3d   [1, S, S, S]    3-D volume ("CT scan"): a sphere, a cube or a cylinder of random size and
//                              position, in noise. 3 classes.
//   motion4d   [1, T, S, S, S] 3-D space + time ("heart scan"): a Gaussian blob moving along one of the six
//                              axis directions. 6 classes; no single frame tells the direction.
#pragma once

#include "datasets/dataset.h"

namespace zoo::datasets {

std::shared_ptr<TensorDataset> make_waveforms(int64_t n, int64_t length, double noise, uint64_t seed);
std::shared_ptr<TensorDataset> make_shapes3d(int64_t n, int64_t size, double noise, uint64_t seed);
std::shared_ptr<TensorDataset> make_motion4d(int64_t n, int64_t frames, int64_t size, double noise, uint64_t seed);

}  // namespace zoo::datasets
