// Words as byte-level character ids, as ELMo's character encoder reads them: the encoding the text datasets write
// and the ELMo model reads, declared once for both (neither depends on the other).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace zoo {

/// 261 ids: padding, the 256 bytes (b -> b + 1), begin and end of word, and the one character of <S> and </S>.
struct CharIds {
  static constexpr int64_t kPad = 0;              ///< padding (no character)
  static constexpr int64_t kBeginWord = 257;      ///< begin of word
  static constexpr int64_t kEndWord = 258;        ///< end of word
  static constexpr int64_t kBeginSentence = 259;  ///< the one character of <S>
  static constexpr int64_t kEndSentence = 260;    ///< the one character of </S>
  static constexpr int64_t kCount = 261;
  /// byte b -> b + 1
  static int64_t of_byte(unsigned char b) { return static_cast<int64_t>(b) + 1; }
};

/// The token strings of record boundaries and unknown words.
inline const std::string kBeginSentence = "<S>", kEndSentence = "</S>", kUnknown = "<unk>";

/// Character ids of one token: [begin-of-word, bytes..., end-of-word, padding...] of length `max_word_length`
/// (a longer word keeps its first max_word_length - 2 bytes); <S> and </S> get their own characters.
std::vector<int64_t> word_chars(const std::string& word, int64_t max_word_length);
/// [N, max_word_length] int64 for a list of tokens.
torch::Tensor words_to_chars(const std::vector<std::string>& words, int64_t max_word_length);

}  // namespace zoo
