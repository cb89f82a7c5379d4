// "Valid choices" messages, written once: every registry and every setting with a fixed set of values uses them.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

namespace zoo {

/// "a, b, c"
inline std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

inline bool contains(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

/// "unknown model 'x'; valid models: a, b, c" (`kind` singular; an `s` is added for the list).
inline std::string unknown_choice(const std::string& kind, const std::string& name,
                                  const std::vector<std::string>& valid) {
  return fmt::format("unknown {} '{}'; valid {}s: {}", kind, name, kind, valid.empty() ? "(none)" : join(valid));
}

}  // namespace zoo
