// zoo train elmo on a text file, and zoo embed.
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

TEST_CASE("CLI: zoo train elmo on your own text, zoo embed (vectors, --json, --compare) and its errors",
          "[elmo][cli]") {
  TempDir tmp;
  std::string text;
  const std::vector<std::string> sentences{
      "I went to the fair last Saturday.", "I do not believe your attitude is fair.",
      "The weather is fair today.",        "We rode the wheel at the fair.",
      "A fair price for a fair deal.",     "She has fair hair and blue eyes."};
  for (int i = 0; i < 8; ++i)
    for (const auto& s : sentences) text += s + "\n\n";
  write_text(tmp.path() / "corpus.txt", text);
  const std::string tiny =
      " --set char_embedding=4 --set filters=[1,8,2,8,3,16] --set projection_dim=8 --set cell_size=16"
      " --set vocab_size=20 --set max_word_length=12";
  auto r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("corpus.txt") + tiny +
                         " --epochs 1 --threads 1 --out " + tmp.str("run"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("val perplexity") && Catch::Contains("forward_perplexity"));
  const auto config = nlohmann::json::parse(test::read_text(tmp.path() / "run" / "config.json"));
  CHECK(config["data"]["options"]["vocab_size"] == 20);  // the model's vocabulary size reaches the dataset
  r = test::run_zoo("embed " + tmp.str("run") + " 'The fair is fair.' --layer 0");
  REQUIRE(r.code == 0);
  CHECK(test::count_lines(r.out) == 6);  // header + 5 tokens
  CHECK_THAT(r.out, Catch::Contains("layer 0, 16 values per token") && Catch::Contains("norm"));
  r = test::run_zoo("embed " + tmp.str("run") + " 'The fair is fair.' --json");
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["layer"] == "mix");
  CHECK(j["tokens"] == nlohmann::json({"the", "fair", "is", "fair", "."}));
  REQUIRE(j["vectors"].size() == 5);
  CHECK(j["vectors"][1].size() == 16);
  CHECK(j["vectors"][1] != j["vectors"][3]);  // the same word in two places: two vectors
  r = test::run_zoo("embed " + tmp.str("run") +
                    " --compare 'I went to the fair last Saturday.' "
                    "'I do not believe your attitude is fair.' --word fair --json");
  REQUIRE(r.code == 0);
  const auto c = nlohmann::json::parse(r.out);
  CHECK(c["cosine"]["0"].get<double>() == Approx(1.0).epsilon(1e-5));
  for (const char* layer : {"1", "2", "mix"}) CHECK(c["cosine"][layer].get<double>() < 0.99999);
  r = test::run_zoo("embed " + tmp.str("run") + " --compare 'one fair' 'two fair' --word fair");
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("layer 0    1.0000") && Catch::Contains("layer mix"));
  // The senses experiment: layer 0 never tells senses apart (its cosines are all 1); the contextual layers do.
  r = test::run_zoo("experiment elmo-senses " + tmp.str("run") + " --json --no-plot --out " + tmp.str("senses"));
  REQUIRE(r.code == 0);
  const auto senses = nlohmann::json::parse(r.out);
  const auto csv = test::read_text(tmp.path() / "senses" / "elmo_senses.csv");
  CHECK(csv.rfind("layer,fraction,mean_cos_same,mean_cos_other\n0,0,", 0) == 0);
  CHECK(test::count_lines(csv) == 5);  // header, layers 0-2 and the mix
  CHECK(senses["triples"] == 32);
  CHECK(senses["layers"]["0"]["fraction"] == 0.0);
  CHECK(senses["layers"]["0"]["mean_cos_same"].get<double>() == Approx(1.0).epsilon(1e-5));
  CHECK(std::max(senses["layers"]["1"]["fraction"].get<double>(), senses["layers"]["2"]["fraction"].get<double>()) > 0);
  // The downstream mix: two class files of records; each task reports softmax(s) over layers 0..2, gamma and the
  // probes' accuracies.
  std::string a_text, b_text;
  for (int i = 0; i < 12; ++i) {
    a_text += "I went to the fair with Anna.\n\nThe fair had a wheel.\n\n";
    b_text += "Paris is fair in the spring.\n\nShe has fair hair.\n\n";
  }
  write_text(tmp.path() / "a.txt", a_text);
  write_text(tmp.path() / "b.txt", b_text);
  r = test::run_zoo("experiment elmo-mix " + tmp.str("run") + " --data-dir " + tmp.str() +
                    " --files a.txt,b.txt --steps 100 --json --out " + tmp.str("mix"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto mix = nlohmann::json::parse(r.out);
  CHECK(mix == nlohmann::json::parse(test::read_text(tmp.path() / "mix" / "elmo_mix.json")));
  REQUIRE(mix["tasks"].size() == 2);
  CHECK(mix["tasks"][0]["classes"] == 2);
  CHECK(mix["tasks"][0]["train_items"].get<int64_t>() + mix["tasks"][0]["test_items"].get<int64_t>() == 48);
  CHECK(mix["tasks"][1]["task"] == "capitalised (token)");
  for (const auto& task : mix["tasks"]) {
    double sum = 0;
    REQUIRE(task["mix"]["weights"].size() == 3);
    for (const auto& w : task["mix"]["weights"]) sum += w.get<double>();
    CHECK(sum == Approx(1.0).epsilon(1e-6));
    CHECK(task["mix"]["weights"] != nlohmann::json({1.0 / 3, 1.0 / 3, 1.0 / 3}));  // trained
    CHECK(task["layer_0"]["weights"] == nlohmann::json({1.0, 0.0, 0.0}));
    CHECK(task["top_layer"]["weights"] == nlohmann::json({0.0, 0.0, 1.0}));
    CHECK(task["mix"]["train_accuracy"].get<double>() >= task["majority_accuracy"].get<double>() - 0.2);
  }
  // The sentence task is separable here (the files share no sentence): the mix probe fits its training items.
  CHECK(mix["tasks"][0]["mix"]["train_accuracy"].get<double>() == 1.0);
  r = test::run_zoo("experiment elmo-mix " + tmp.str("run") + " --data-dir " + tmp.str() + " --files a.txt");
  CHECK(r.code == 1);
  CHECK_THAT(r.err, Catch::Contains("--files needs at least two files"));
  write_text(tmp.path() / "bad-triples.txt", "fair | only two | parts\n");
  r = test::run_zoo("experiment elmo-senses " + tmp.str("run") + " --triples " + tmp.str("bad-triples.txt"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("bad-triples.txt:1: expected 'word | sentence A | same sense | other sense'"));
  // Errors: one line each, non-zero exit.
  r = test::run_zoo("embed " + tmp.str("run") + " --compare 'a b' 'c d' --word fair");
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("'fair' is not a token of \"a b\""));
  r = test::run_zoo("embed " + tmp.str("run") + " 'hello' --layer 7");
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("--layer must be 0..2 or mix"));
  r = test::run_zoo("embed " + tmp.str("run"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("needs a sentence"));
  write_text(tmp.path() / "empty.txt", "%\n%\n");
  r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("empty.txt") + tiny + " --out " +
                    tmp.str("run2"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("is empty"));
  CHECK(test::count_lines(r.err) == 1);
  r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("corpus.txt") + " --out " + tmp.str("run3"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("too few for vocab_size 5000"));
}
