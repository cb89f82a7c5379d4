#include "tools/cli/settings.h"

#include "training/checkpoint.h"
#include "training/run.h"

#include <algorithm>
#include <cstdlib>

namespace zoo::cli {

using nlohmann::json;

json parse_setting_text(const std::string& text, const json& like, std::string& problem) {
  switch (like.type()) {
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: {
      int64_t v = 0;
      const auto* end = text.data() + text.size();
      const auto [ptr, ec] = std::from_chars(text.data(), end, v);
      if (ec == std::errc::result_out_of_range) {
        problem = "must be an integer from " + std::to_string(INT64_MIN) + " to " + std::to_string(INT64_MAX) +
                  ", got '" + text + "'";
      } else if (ec != std::errc() || ptr != end || text.empty()) {
        problem = "must be an integer, got '" + text + "'";
      }
      return v;
    }
    case json::value_t::number_float: {
      char* end = nullptr;
      const double v = text.empty() ? 0 : std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size()) problem = "must be a number, got '" + text + "'";
      return v;
    }
    case json::value_t::string:
      return text;
    default: {
      json v;
      try {
        v = training::parse_json_or_discard(text, "the value");
      } catch (const std::exception& e) {
        problem = e.what();
        return json();
      }
      return v.is_discarded() ? json(text) : v;
    }
  }
}

std::string in_flags(std::string message) {
  static const auto table = [] {
    std::vector<std::pair<std::string, std::string>> t;
    for (const auto& s : training::run_schema().settings()) {
      // Nested settings keep their own flag: train.epochs -> --epochs, data.name -> --dataset.
      if (s.name.find('.') != std::string::npos) t.emplace_back(s.name, s.cli_flag);
    }
    std::sort(t.begin(), t.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    return t;
  }();
  auto word_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; };
  for (const auto& [path, flag] : table) {
    for (size_t at = message.find(path); at != std::string::npos; at = message.find(path, at)) {
      const size_t end = at + path.size();
      const bool whole =
          (at == 0 || !word_char(message[at - 1])) &&
          (end == message.size() || !word_char(message[end]) || (message[end] == '.' && end + 1 == message.size()));
      if (whole) {
        message.replace(at, path.size(), flag);
        at += flag.size();
      } else {
        at = end;
      }
    }
  }
  return message;
}

}  // namespace zoo::cli
