// Devices by name, as config.json and --device spell them.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace zoo::training {

/// Parses "cpu" / "cuda" / "cuda:1" with a clear error when the device is unknown or unavailable.
c10::Device parse_device(const std::string& spec);

}  // namespace zoo::training
