// The text corpus loader: tokens, records, character ids, vocabulary, windows, errors.
#include "datasets/text.h"
#include "helpers.h"
#include "models/elmo.h"
#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/lm_objective.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>

using namespace zoo;
using test::TempDir;
using torch::Tensor;
namespace fs = std::filesystem;
using zoo::test::write_text;

TEST_CASE("Text: tokens, records split by % lines or blank lines, <S> and </S> around each", "[elmo][data]") {
  CHECK(datasets::tokenize("I don't like it, Sam!  5.5 o'clock") ==
        std::vector<std::string>{"i", "don't", "like", "it", ",", "sam", "!", "5", ".", "5", "o'clock"});
  CHECK(datasets::tokenize("Ça va?", /*lowercase=*/false) == std::vector<std::string>{"\xc3\x87"
                                                                                      "a",
                                                                                      "va", "?"});
  CHECK(datasets::tokenize("end' 'quote") == std::vector<std::string>{"end", "'", "'", "quote"});
  TempDir tmp;
  write_text(tmp.path() / "fort", "First one.\n%\nSecond\n\nstill second.\n%\n%\nThird.\n");
  write_text(tmp.path() / "fort.dat", std::string("\0\0\0\2binary", 10));  // strfile index: skipped in directories
  write_text(tmp.path() / "plain", "Para one.\n\nPara two\nline two.\n\n\n");
  auto records = datasets::read_records(tmp.str());
  REQUIRE(records.size() == 5);
  CHECK(records[0] == "First one.\n");
  CHECK(records[1] == "Second\n\nstill second.\n");
  CHECK(records[3] == "Para one.\n");
  CHECK(records[4] == "Para two\nline two.\n");
  // Several files with ':'.
  CHECK(datasets::read_records(tmp.str("plain") + ":" + tmp.str("fort")).size() == 5);
}

TEST_CASE("Text: character ids with begin/end of word and padding, <S> and </S> have their own", "[elmo][data]") {
  using C = datasets::CharIds;
  CHECK(datasets::word_chars("ab", 6) == std::vector<int64_t>{C::kBeginWord, 'a' + 1, 'b' + 1, C::kEndWord, 0, 0});
  CHECK(datasets::word_chars("abcdefgh", 5) ==
        std::vector<int64_t>{C::kBeginWord, 'a' + 1, 'b' + 1, 'c' + 1, C::kEndWord});
  CHECK(datasets::word_chars("<S>", 5) == std::vector<int64_t>{C::kBeginWord, C::kBeginSentence, C::kEndWord, 0, 0});
  CHECK(datasets::word_chars("</S>", 5) == std::vector<int64_t>{C::kBeginWord, C::kEndSentence, C::kEndWord, 0, 0});
  CHECK(datasets::word_chars("\xff", 4) == std::vector<int64_t>{C::kBeginWord, 256, C::kEndWord, 0});
}

TEST_CASE("Text: vocabulary by frequency, windows with forward and backward targets", "[elmo][data]") {
  const std::vector<std::vector<std::string>> records{{"<S>", "a", "b", "a", "</S>"}, {"<S>", "c", "a", "</S>"}};
  auto vocab = datasets::Vocabulary::build(records, 5);
  CHECK(vocab.words() == std::vector<std::string>{"<unk>", "<S>", "</S>", "a", "b"});  // b before c: tie by bytes
  CHECK(vocab.counts() == std::vector<int64_t>{1, 2, 2, 3, 1});
  CHECK(vocab.id("c") == 0);
  CHECK_THROWS_WITH(datasets::Vocabulary::build(records, 7),
                    Catch::Contains("3 distinct words, too few for vocab_size 7"));
  // Stream: <S> a b a </S> <S> c a </S> = ids 1 3 4 3 2 1 0 3 2; windows of 4.
  datasets::LanguageModelDataset data(records, vocab, 4, 6, 0, "toy");
  REQUIRE(data.size() == 3);
  auto batch = data.get(torch::tensor({0, 2}, torch::kInt64));
  CHECK(batch.input.sizes() == torch::IntArrayRef({2, 4, 6}));
  CHECK(batch.target.sizes() == torch::IntArrayRef({2, 2, 4}));
  CHECK(torch::equal(batch.target[0][0], torch::tensor({3, 4, 3, 2})));      // next tokens
  CHECK(torch::equal(batch.target[0][1], torch::tensor({-1, 1, 3, 4})));     // previous tokens
  CHECK(torch::equal(batch.target[1][0], torch::tensor({-1, -1, -1, -1})));  // </S> is last: nothing follows
  CHECK(torch::equal(batch.target[1][1], torch::tensor({3, -1, -1, -1})));
  CHECK(torch::equal(batch.input[1][1], torch::zeros({6}, torch::kInt64)));  // padding past the end
  // The out-of-vocabulary "c" keeps its characters: the char CNN sees every word.
  CHECK(torch::equal(batch.input[0][0], torch::tensor(datasets::word_chars("<S>", 6))));
  CHECK(torch::equal(data.get(torch::tensor({1}, torch::kInt64)).input[0][2],
                     torch::tensor(datasets::word_chars("c", 6))));
  // Unigram perplexity by hand: targets = stream[1:] + stream[:-1] with p = counts / 9.
  const std::vector<int64_t> stream{1, 3, 4, 3, 2, 1, 0, 3, 2};
  double nll = 0;
  int n = 0;
  for (size_t i = 0; i + 1 < stream.size(); ++i) {
    for (int64_t id : {stream[i + 1], stream[i]}) nll -= std::log(static_cast<double>(vocab.counts()[id]) / 9.0), ++n;
  }
  CHECK(data.unigram_perplexity(vocab) == Approx(std::exp(nll / n)).epsilon(1e-9));
}

TEST_CASE("Text: an empty corpus, a missing file, binary data and a too small vocabulary are one-line errors",
          "[elmo][data][errors]") {
  TempDir tmp;
  write_text(tmp.path() / "empty.txt", "\n\n%\n%\n");
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("empty.txt")),
                    Catch::Contains("is empty") && Catch::Contains("--data-dir"));
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("missing.txt")), Catch::Contains("does not exist"));
  write_text(tmp.path() / "binary", std::string("text\0more", 9));
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("binary")), Catch::Contains("is binary data, not text"));
  fs::create_directories(tmp.path() / "nothing");
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("nothing")), Catch::Contains("has no files"));
  write_text(tmp.path() / "small.txt", "one two\n\nthree\n");
  CHECK_THROWS_WITH(datasets::load_text_corpus(tmp.str("small.txt"), 100, 0.5, 0, true),
                    Catch::Contains("too few for vocab_size 100") && Catch::Contains("--set vocab_size="));
  if (::geteuid() != 0) {  // root reads everything
    write_text(tmp.path() / "locked.txt", "secret");
    fs::permissions(tmp.path() / "locked.txt", fs::perms::none);
    CHECK_THROWS_WITH(datasets::read_records(tmp.str("locked.txt")), Catch::Contains("cannot read"));
  }
}
