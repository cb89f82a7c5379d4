// Text corpora for language models: reading, tokenising, character ids, a word vocabulary, and batches of
// fixed-length windows for a forward and a backward language model.
//
// Reading: a file, several files, or a directory (its regular files, sorted by name, except `*.dat` and `*.u8`:
// the strfile indexes and the UTF-8 duplicates of Debian's fortunes). Records are separated by lines that hold
// only `%` (the fortune format); a file without such lines has one record per paragraph (blank-line separated).
//
// Tokens: maximal runs of letters and digits (with inner apostrophes: "don't", "o'clock") and single other
// visible characters ("," "!" "$"); bytes >= 128 count as letters, so UTF-8 words stay whole. Lower-cased by
// default. Every record is wrapped in <S> ... </S>.
#pragma once

#include "core/chars.h"
#include "datasets/dataset.h"

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace zoo::datasets {

/// The character encoding of words (core/chars.h), also under the datasets' names.
using ::zoo::CharIds;
using ::zoo::kBeginSentence;
using ::zoo::kEndSentence;
using ::zoo::kUnknown;
using ::zoo::word_chars;
using ::zoo::words_to_chars;

/// The documented tokenisation of one piece of text (no <S> / </S>).
std::vector<std::string> tokenize(const std::string& text, bool lowercase = true);

/// Records of the corpus at `path` (a file, a directory, or several paths separated by ':'), each the raw text
/// of one record. Errors: a missing or unreadable path, binary data (a NUL byte, or mostly non-text bytes), no
/// text at all.
std::vector<std::string> read_records(const std::string& path);

/// A word vocabulary: id 0 = <unk>, 1 = <S>, 2 = </S>, then the most frequent words (ties by byte order).
class Vocabulary {
 public:
  Vocabulary() = default;
  /// The `size` - 3 most frequent tokens of `records` (tokens as counted there). Throws if the records hold
  /// fewer distinct words than that ("a vocabulary too small for the options").
  static Vocabulary build(const std::vector<std::vector<std::string>>& records, int64_t size);
  int64_t size() const { return static_cast<int64_t>(words_.size()); }
  int64_t id(const std::string& word) const;  ///< 0 (<unk>) when not in the vocabulary
  const std::string& word(int64_t id) const { return words_.at(static_cast<size_t>(id)); }
  const std::vector<std::string>& words() const { return words_; }
  /// How often each vocabulary word occurs in the records it was built from (<S> and </S> included).
  const std::vector<int64_t>& counts() const { return counts_; }

 private:
  std::vector<std::string> words_;
  std::vector<int64_t> counts_;
  std::map<std::string, int64_t> ids_;
};

/// Fixed-length windows over a token stream, for a bidirectional language model.
/// Item i is the window of positions [i * T, i * T + T) of the stream (<S> w ... </S> <S> ...):
///   input  [T, max_word_length] int64 character ids (padding rows past the end of the stream)
///   target [2, T] int64: row 0 the next token's word id (forward LM), row 1 the previous token's (backward LM),
///          -1 where there is none (the stream's ends, padding).
class LanguageModelDataset : public Dataset {
 public:
  LanguageModelDataset(const std::vector<std::vector<std::string>>& records, const Vocabulary& vocab, int64_t seq_len,
                       int64_t max_word_length, int64_t limit, std::string description);
  int64_t size() const override { return items_; }
  Batch get(const torch::Tensor& indices) const override;
  std::string describe() const override { return description_; }
  int64_t tokens() const { return stream_.size(0); }  ///< tokens in the stream (<S> and </S> included)
  /// Perplexity of the unigram model (the vocabulary's training counts, out-of-vocabulary words as <unk>) over
  /// the targets of both directions: the baseline a language model must beat.
  double unigram_perplexity(const Vocabulary& vocab) const;

 private:
  torch::Tensor stream_;  ///< [L] int64 word ids
  torch::Tensor types_;   ///< [L] int64 ids into chars_
  torch::Tensor chars_;   ///< [types, W] int64
  int64_t seq_len_, items_;
  std::string description_;
};

/// Options of the text datasets (`--data-option`): seq_len, vocab_size, max_word_length, val_fraction, seed,
/// lowercase. Reads and tokenises the corpus at `path`, splits its records (a seeded shuffle; val_fraction of
/// them to the test split), builds the vocabulary from the train records.
struct TextCorpus {
  std::vector<std::vector<std::string>> train_records, test_records;
  Vocabulary vocab;
};
TextCorpus load_text_corpus(const std::string& path, int64_t vocab_size, double val_fraction, uint64_t seed,
                            bool lowercase);

/// The Debian fortunes directory, /usr/share/games/fortunes.
std::string default_fortunes_dir();

}  // namespace zoo::datasets
