// Auxiliary losses of layers (models/auxiliary.h), wired into the trainer for any model.
#pragma once

#include "training/trainer.h"

namespace zoo::training {

/// Finds every submodule of the trainer's model that implements models::AuxiliaryLoss (e.g. a Mixture of
/// Experts) and installs, through the trainer's extra-loss hook, the sum of their losses under the name "aux",
/// and, as log terms, their statistics (prefixed by the submodule's name when there are several such layers).
/// Returns the number of such layers (0: nothing installed).
int64_t attach_auxiliary_losses(Trainer& trainer);

}  // namespace zoo::training
