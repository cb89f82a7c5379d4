// Helpers for pretty_print: lists print as Python does, "[32, 64]".
#pragma once

#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace zoo::models {

template <typename T>
std::string format_list(const std::vector<T>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << "]";
  return out.str();
}

}  // namespace zoo::models
