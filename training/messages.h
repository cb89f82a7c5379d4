// One-line messages from multi-line library errors: zoo's errors are one line (see README, "Bad input").
#pragma once

#include <string>

namespace zoo::training {

/// The first line of a message (LibTorch's errors go on with context and backtraces).
inline std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

/// The last non-empty line of a message (TorchScript interpreter errors end with the line that says what failed).
inline std::string last_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  const auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

}  // namespace zoo::training
