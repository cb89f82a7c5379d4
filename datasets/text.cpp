#include "datasets/text.h"

#include "datasets/options.h"
#include "datasets/registry.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace fs = std::filesystem;

namespace zoo::datasets {

namespace {

bool word_byte(unsigned char c) { return std::isalnum(c) || c >= 128; }

}  // namespace

std::vector<std::string> tokenize(const std::string& text, bool lowercase) {
  std::vector<std::string> out;
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (word_byte(c)) {
      size_t j = i + 1;
      while (j < n) {
        const auto d = static_cast<unsigned char>(text[j]);
        if (word_byte(d))
          ++j;
        else if (d == '\'' && j + 1 < n && word_byte(static_cast<unsigned char>(text[j + 1])))
          j += 2;
        else
          break;
      }
      out.push_back(text.substr(i, j - i));
      i = j;
    } else {
      if (std::isgraph(c)) out.emplace_back(1, static_cast<char>(c));
      ++i;
    }
  }
  if (lowercase)
    for (auto& w : out)
      for (auto& ch : w)
        if (static_cast<unsigned char>(ch) < 128) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

namespace {

std::vector<std::string> corpus_files(const std::string& spec) {
  std::vector<std::string> files;
  std::stringstream parts(spec);
  std::string part;
  while (std::getline(parts, part, ':')) {
    if (part.empty()) continue;
    std::error_code ec;
    const auto status = fs::status(part, ec);
    if (ec || !fs::exists(status))
      throw std::runtime_error("text corpus " + part +
                               " does not exist; give a text file, several separated by "
                               "':', or a directory (--data-dir)");
    if (fs::is_directory(status)) {
      std::vector<std::string> in_dir;
      for (const auto& entry : fs::directory_iterator(part, ec)) {
        const auto ext = entry.path().extension().string();
        if (entry.is_regular_file() && ext != ".dat" && ext != ".u8") in_dir.push_back(entry.path().string());
      }
      if (ec) throw std::runtime_error("cannot list " + part + ": " + ec.message());
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else {
      files.push_back(part);
    }
  }
  return files;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  const auto nul = text.find('\0');
  if (nul != std::string::npos)
    throw std::runtime_error(path + " is binary data, not text (a NUL byte at offset " + std::to_string(nul) +
                             "); give text files only");
  int64_t odd = 0;
  for (unsigned char c : text)
    if (c < 32 && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != '\b' && c != 27) ++odd;
  if (!text.empty() && odd * 10 > static_cast<int64_t>(text.size()))
    throw std::runtime_error(path + " is binary data, not text (" + std::to_string(odd) +
                             " control bytes); give text files only");
  return text;
}

void split_records(const std::string& text, std::vector<std::string>& records) {
  // A line holding only '%' separates fortune records; without one, blank lines separate paragraphs.
  std::vector<std::string> lines;
  std::stringstream in(text);
  std::string line;
  bool fortune = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "%") fortune = true;
    lines.push_back(line);
  }
  std::string current;
  auto flush = [&] {
    if (current.find_first_not_of(" \t\n\f") != std::string::npos) records.push_back(current);
    current.clear();
  };
  for (const auto& l : lines) {
    const bool separator = fortune ? l == "%" : l.find_first_not_of(" \t\f") == std::string::npos;
    if (separator)
      flush();
    else
      current += l + "\n";
  }
  flush();
}

}  // namespace

std::vector<std::string> read_records(const std::string& path) {
  const auto files = corpus_files(path);
  if (files.empty()) throw std::runtime_error("text corpus " + path + " has no files; give text files (--data-dir)");
  std::vector<std::string> records;
  for (const auto& f : files) split_records(read_text_file(f), records);
  if (records.empty())
    throw std::runtime_error("text corpus " + path + " is empty (no text in " + std::to_string(files.size()) +
                             " file(s)); give files with text (--data-dir)");
  return records;
}

Vocabulary Vocabulary::build(const std::vector<std::vector<std::string>>& records, int64_t size) {
  if (size < 4)
    throw std::invalid_argument("vocab_size must be >= 4 (<unk>, <S>, </S> and a word), got " + std::to_string(size));
  std::unordered_map<std::string, int64_t> counts;
  for (const auto& r : records)
    for (const auto& w : r) ++counts[w];
  std::vector<std::pair<std::string, int64_t>> sorted;
  for (const auto& [w, c] : counts)
    if (w != kBeginSentence && w != kEndSentence && w != kUnknown) sorted.emplace_back(w, c);
  const auto wanted = static_cast<size_t>(size - 3);
  if (sorted.size() < wanted)
    throw std::invalid_argument("the corpus has " + std::to_string(sorted.size()) +
                                " distinct words, too few for "
                                "vocab_size " +
                                std::to_string(size) + "; choose vocab_size <= " + std::to_string(sorted.size() + 3) +
                                " (--set vocab_size=N) or a larger corpus");
  std::partial_sort(
      sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(wanted), sorted.end(),
      [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  Vocabulary v;
  int64_t kept = 0, total = 0;
  for (const auto& [w, c] : counts) total += c;
  v.words_ = {kUnknown, kBeginSentence, kEndSentence};
  v.counts_ = {0, counts.count(kBeginSentence) ? counts[kBeginSentence] : 0,
               counts.count(kEndSentence) ? counts[kEndSentence] : 0};
  kept = v.counts_[1] + v.counts_[2];
  for (size_t i = 0; i < wanted; ++i) {
    v.words_.push_back(sorted[i].first);
    v.counts_.push_back(sorted[i].second);
    kept += sorted[i].second;
  }
  v.counts_[0] = total - kept;  // every word left out counts as <unk>
  for (size_t i = 0; i < v.words_.size(); ++i) v.ids_[v.words_[i]] = static_cast<int64_t>(i);
  return v;
}

int64_t Vocabulary::id(const std::string& word) const {
  auto it = ids_.find(word);
  return it == ids_.end() ? 0 : it->second;
}

LanguageModelDataset::LanguageModelDataset(const std::vector<std::vector<std::string>>& records,
                                           const Vocabulary& vocab, int64_t seq_len, int64_t max_word_length,
                                           int64_t limit, std::string description)
    : seq_len_(seq_len), description_(std::move(description)) {
  if (seq_len < 1) throw std::invalid_argument("seq_len must be >= 1, got " + std::to_string(seq_len));
  std::vector<int64_t> stream, types;
  std::unordered_map<std::string, int64_t> type_ids;
  std::vector<std::string> type_words;
  for (const auto& r : records)
    for (const auto& w : r) {
      auto [it, added] = type_ids.emplace(w, static_cast<int64_t>(type_words.size()));
      if (added) type_words.push_back(w);
      stream.push_back(vocab.id(w));
      types.push_back(it->second);
    }
  if (stream.empty()) throw std::runtime_error(description_ + ": no tokens; give a corpus with text");
  int64_t items = (static_cast<int64_t>(stream.size()) + seq_len - 1) / seq_len;
  items = limited(items, limit);
  const auto length = std::min<int64_t>(static_cast<int64_t>(stream.size()), items * seq_len + 1);
  stream.resize(static_cast<size_t>(length));
  types.resize(static_cast<size_t>(length));
  stream_ = torch::tensor(stream, torch::kInt64);
  types_ = torch::tensor(types, torch::kInt64);
  chars_ = words_to_chars(type_words, max_word_length);
  items_ = items;
}

Batch LanguageModelDataset::get(const torch::Tensor& indices) const {
  const int64_t n = indices.size(0), T = seq_len_, L = stream_.size(0);
  // Positions [N, T]; -1 outside the stream.
  auto pos = indices.to(torch::kInt64).unsqueeze(1) * T + torch::arange(T, torch::kInt64).unsqueeze(0);
  auto valid = pos < L;
  auto at = [&](const torch::Tensor& p, const torch::Tensor& source) {
    const auto ok = (p >= 0) & (p < L);
    return torch::where(ok, source.index({p.clamp(0, L - 1)}), torch::full_like(p, -1));
  };
  auto type = at(pos, types_);
  auto chars = chars_.index({type.clamp_min(0)});  // [N, T, W]
  chars.masked_fill_(~valid.unsqueeze(-1), CharIds::kPad);
  auto next = at(pos + 1, stream_).masked_fill(~valid, -1);
  auto prev = at(pos - 1, stream_).masked_fill(~valid, -1);
  return {chars, torch::stack({next, prev}, 1).view({n, 2, T})};
}

double LanguageModelDataset::unigram_perplexity(const Vocabulary& vocab) const {
  auto counts = torch::tensor(vocab.counts(), torch::kFloat64);
  auto logp = torch::log(counts.clamp_min(1)) - std::log(counts.sum().item<double>());
  // Targets of both directions: every token but the first (forward) and every token but the last (backward).
  const auto L = stream_.size(0);
  auto targets = torch::cat({stream_.slice(0, 1, L), stream_.slice(0, 0, L - 1)});
  return std::exp(-logp.index({targets}).mean().item<double>());
}

TextCorpus load_text_corpus(const std::string& path, int64_t vocab_size, double val_fraction, uint64_t seed,
                            bool lowercase) {
  if (!(val_fraction > 0 && val_fraction < 1))
    throw std::invalid_argument("dataset option 'val_fraction' must be in (0, 1), got " + std::to_string(val_fraction));
  auto raw = read_records(path);
  if (raw.size() < 2)
    throw std::runtime_error("text corpus " + path + " has only one record; a validation split needs two or more");
  std::vector<size_t> order(raw.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const auto n_val =
      std::max<size_t>(1, static_cast<size_t>(std::llround(val_fraction * static_cast<double>(raw.size()))));
  TextCorpus c;
  for (size_t k = 0; k < order.size(); ++k) {
    std::vector<std::string> r{kBeginSentence};
    auto words = tokenize(raw[order[k]], lowercase);
    r.insert(r.end(), words.begin(), words.end());
    r.push_back(kEndSentence);
    (k < n_val ? c.test_records : c.train_records).push_back(std::move(r));
  }
  c.vocab = Vocabulary::build(c.train_records, vocab_size);
  return c;
}

std::string default_fortunes_dir() { return "/usr/share/games/fortunes"; }

namespace {

Splits load_text_splits(const DataConfig& c, const std::string& name, const std::string& default_path) {
  check_option_names(c.options, {"seq_len", "vocab_size", "max_word_length", "val_fraction", "seed", "lowercase"},
                     name);
  const auto& o = c.options;
  const std::string path = c.data_dir.empty() ? default_path : c.data_dir;
  if (path.empty()) throw std::invalid_argument("dataset 'text' needs --data-dir FILE[:FILE...] or DIR");
  bool lowercase = true;
  if (o.contains("lowercase")) {
    if (!o["lowercase"].is_boolean())
      throw std::invalid_argument("dataset option 'lowercase' expects true or false, got " + o["lowercase"].dump());
    lowercase = o["lowercase"].get<bool>();
  }
  const auto seq_len = int_option(o, "seq_len", 20), width = int_option(o, "max_word_length", 20);
  auto corpus = load_text_corpus(path, int_option(o, "vocab_size", 5000), number_option(o, "val_fraction", 0.05),
                                 static_cast<uint64_t>(int_option(o, "seed", 0)), lowercase);
  const std::string what = name + " " + path + " (vocabulary " + std::to_string(corpus.vocab.size()) + ", windows of " +
                           std::to_string(seq_len) + " tokens)";
  return Splits{std::make_shared<LanguageModelDataset>(corpus.train_records, corpus.vocab, seq_len, width, c.limit,
                                                       what + ", train"),
                std::make_shared<LanguageModelDataset>(corpus.test_records, corpus.vocab, seq_len, width, c.limit,
                                                       what + ", validation")};
}

const detail::DatasetRegistrar fortunes{[] {
  DatasetEntry e;
  e.name = "fortunes";
  e.description = "English text for language models: Debian's fortunes (records split by '%'), 5% validation";
  e.default_dir = default_fortunes_dir;
  e.load = [](const DataConfig& c) { return load_text_splits(c, "fortunes", default_fortunes_dir()); };
  return e;
}()};

const detail::DatasetRegistrar text{[] {
  DatasetEntry e;
  e.name = "text";
  e.description =
      "your text for language models: --data-dir FILE, FILE:FILE... or DIR (records split by '%' "
      "lines or blank lines)";
  e.default_dir = [] { return std::string("(none: pass --data-dir)"); };
  e.load = [](const DataConfig& c) { return load_text_splits(c, "text", ""); };
  return e;
}()};

}  // namespace

}  // namespace zoo::datasets
