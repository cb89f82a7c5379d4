// Helpers for pretty_print: lists print as Python does, "[32, 64]".
#pragma once

#include <fmt/format.h>

#include <string>
#include <vector>

namespace zoo::models {

template <typename T>
std::string format_list(const std::vector<T>& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

}  // namespace zoo::models
