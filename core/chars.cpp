#include "core/chars.h"

#include <algorithm>
#include <stdexcept>

namespace zoo {

std::vector<int64_t> word_chars(const std::string& word, int64_t max_word_length) {
  if (max_word_length < 3)
    throw std::invalid_argument("max_word_length must be >= 3, got " + std::to_string(max_word_length));
  std::vector<int64_t> ids(static_cast<size_t>(max_word_length), CharIds::kPad);
  ids[0] = CharIds::kBeginWord;
  size_t n = 0;
  if (word == kBeginSentence) {
    ids[1] = CharIds::kBeginSentence;
    n = 1;
  } else if (word == kEndSentence) {
    ids[1] = CharIds::kEndSentence;
    n = 1;
  } else {
    n = std::min<size_t>(word.size(), static_cast<size_t>(max_word_length - 2));
    for (size_t i = 0; i < n; ++i) ids[i + 1] = CharIds::of_byte(static_cast<unsigned char>(word[i]));
  }
  ids[n + 1] = CharIds::kEndWord;
  return ids;
}

torch::Tensor words_to_chars(const std::vector<std::string>& words, int64_t max_word_length) {
  auto out = torch::empty({static_cast<int64_t>(words.size()), max_word_length}, torch::kInt64);
  auto* p = out.data_ptr<int64_t>();
  for (const auto& w : words) {
    const auto ids = word_chars(w, max_word_length);
    p = std::copy(ids.begin(), ids.end(), p);
  }
  return out;
}

}  // namespace zoo
