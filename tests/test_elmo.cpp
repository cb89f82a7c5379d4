// ELMo: the text corpus loader, the character CNN + highway, the biLM's directions, the scalar mix, and the
// sheet's claims (context-free layer 0, contextual layers 1 and 2, a language model better than unigrams).
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

namespace {

using test::max_abs;

models::ElmoOptions tiny_elmo() {
  // AllenNLP's test fixture sizes (char embedding 4, filters up to width 5, 2 highway layers, LSTM 64 -> 16).
  return models::ElmoOptions()
      .char_embedding(4)
      .filters({1, 4, 2, 8, 3, 16, 4, 32, 5, 64})
      .highway_layers(2)
      .max_word_length(12)
      .projection_dim(16)
      .cell_size(64)
      .vocab_size(50)
      .dropout(0.0);
}

Tensor chars_of(const std::vector<std::string>& words, int64_t width = 12) {
  return datasets::words_to_chars(words, width).unsqueeze(0);
}

void write_file(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

}  // namespace

TEST_CASE("Text: tokens, records split by % lines or blank lines, <S> and </S> around each", "[elmo][data]") {
  CHECK(datasets::tokenize("I don't like it, Sam!  5.5 o'clock") ==
        std::vector<std::string>{"i", "don't", "like", "it", ",", "sam", "!", "5", ".", "5", "o'clock"});
  CHECK(datasets::tokenize("Ça va?", /*lowercase=*/false) == std::vector<std::string>{"\xc3\x87"
                                                                                      "a",
                                                                                      "va", "?"});
  CHECK(datasets::tokenize("end' 'quote") == std::vector<std::string>{"end", "'", "'", "quote"});
  TempDir tmp;
  write_file(tmp.path() / "fort", "First one.\n%\nSecond\n\nstill second.\n%\n%\nThird.\n");
  write_file(tmp.path() / "fort.dat", std::string("\0\0\0\2binary", 10));  // strfile index: skipped in directories
  write_file(tmp.path() / "plain", "Para one.\n\nPara two\nline two.\n\n\n");
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
  write_file(tmp.path() / "empty.txt", "\n\n%\n%\n");
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("empty.txt")),
                    Catch::Contains("is empty") && Catch::Contains("--data-dir"));
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("missing.txt")), Catch::Contains("does not exist"));
  write_file(tmp.path() / "binary", std::string("text\0more", 9));
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("binary")), Catch::Contains("is binary data, not text"));
  fs::create_directories(tmp.path() / "nothing");
  CHECK_THROWS_WITH(datasets::read_records(tmp.str("nothing")), Catch::Contains("has no files"));
  write_file(tmp.path() / "small.txt", "one two\n\nthree\n");
  CHECK_THROWS_WITH(datasets::load_text_corpus(tmp.str("small.txt"), 100, 0.5, 0, true),
                    Catch::Contains("too few for vocab_size 100") && Catch::Contains("--set vocab_size="));
  if (::geteuid() != 0) {  // root reads everything
    write_file(tmp.path() / "locked.txt", "secret");
    fs::permissions(tmp.path() / "locked.txt", fs::perms::none);
    CHECK_THROWS_WITH(datasets::read_records(tmp.str("locked.txt")), Catch::Contains("cannot read"));
  }
}

TEST_CASE("ELMo: shapes, names as in a Python port, layer 0 duplicated", "[elmo]") {
  torch::manual_seed(0);
  models::Elmo elmo(tiny_elmo());
  elmo->eval();
  const auto chars = datasets::words_to_chars({"<S>", "the", "cat", "sat", "</S>"}, 12).unsqueeze(0).repeat({2, 1, 1});
  const auto out = elmo->forward(chars);
  CHECK(out.sizes() == torch::IntArrayRef({3, 2, 5, 32}));
  CHECK(torch::equal(out[0].slice(-1, 0, 16), out[0].slice(-1, 16)));
  const auto params = elmo->named_parameters();
  for (const char* name : {"char_embedding.weight", "char_convs.0.weight", "char_convs.4.bias",
                           "highway.layers.1.weight", "projection.weight", "forward_layers.0.input_linearity.weight",
                           "forward_layers.1.state_linearity.bias", "backward_layers.0.state_projection.weight",
                           "softmax.weight", "scalar_mix.scalar_parameters.0", "scalar_mix.gamma"})
    CHECK(params.contains(name));
  // Highway gates start by carrying (bias 1), the forget gate's bias is 1, the padding character is a zero row.
  CHECK(max_abs(elmo->highway->layers[0]->as<torch::nn::Linear>()->bias.slice(0, 124) - 1) == 0);
  const auto& bias = elmo->forward_layers[0]->as<models::LstmWithProjection>()->state_linearity->bias;
  CHECK(max_abs(bias.slice(0, 64, 128) - 1) == 0);
  CHECK(max_abs(bias.slice(0, 0, 64)) == 0);
  CHECK(max_abs(elmo->char_embedding->weight[0]) == 0);
  CHECK_THROWS_WITH(elmo->forward(chars.slice(2, 0, 10)), Catch::Contains("elmo expects character ids [N, T, 12]"));
  CHECK_THROWS_WITH(models::build_model("elmo", {{"filters", {1, 4, 30, 8}}}),
                    Catch::Contains("exceeds max_word_length"));
}

TEST_CASE("ELMo: without gradients, the character CNN as products over windows equals conv1d and max over time",
          "[elmo]") {
  torch::manual_seed(3);
  models::Elmo elmo(tiny_elmo());
  elmo->to(torch::kFloat64);
  elmo->eval();
  auto chars = datasets::words_to_chars({"<S>", "a", "characteristically", "odd", "word", "x", "</S>"}, 12);
  chars = torch::stack({chars, chars.flip(0)});  // two sentences, a padding word in each
  chars[0][5].fill_(datasets::CharIds::kPad);
  chars[1][1].fill_(datasets::CharIds::kPad);
  const auto reference = elmo->token_embedding(chars);  // with gradients: torch::nn::Conv1d and max(-1)
  REQUIRE(reference.requires_grad());
  torch::NoGradGuard no_grad;
  const auto windows = elmo->token_embedding(chars);
  CHECK(max_abs(reference) > 1e-2);
  CHECK(torch::allclose(windows, reference, 1e-10, 1e-12));
  CHECK(max_abs(windows[0][5]) == 0);  // the padding word
}

TEST_CASE("ELMo claim: layer 0 gives a word the same vector in every context, layers 1 and 2 do not", "[elmo]") {
  torch::manual_seed(1);
  models::Elmo elmo(tiny_elmo());
  elmo->eval();
  torch::NoGradGuard no_grad;
  const auto a = elmo->layers(chars_of({"<S>", "i", "went", "to", "the", "fair", "</S>"}));
  const auto b = elmo->layers(chars_of({"<S>", "your", "attitude", "is", "fair", "</S>"}));
  // Equal up to float rounding: the character CNN's product over all windows may round a row differently when
  // the batch has another number of rows (a 7- against a 6-word sentence), never by what the neighbours are.
  CHECK(max_abs(a[0][0][5] - b[0][0][4]) <= 1e-6);
  for (int layer : {1, 2}) CHECK(max_abs(a[layer][0][5] - b[layer][0][4]) > 1e-3);
}

TEST_CASE("ELMo claim: the forward LM never sees the future, the backward LM never the past, padding changes nothing",
          "[elmo]") {
  torch::manual_seed(2);
  models::Elmo elmo(tiny_elmo());
  elmo->eval();
  torch::NoGradGuard no_grad;
  const std::vector<std::string> words{"<S>", "a", "quick", "brown", "fox", "jumps", "</S>"};
  auto changed = words;
  changed[4] = "dog";  // token t + 1 = 4
  auto [f1, b1] = elmo->lm_states(chars_of(words));
  auto [f2, b2] = elmo->lm_states(chars_of(changed));
  CHECK(max_abs(f1.slice(1, 0, 4) - f2.slice(1, 0, 4)) == 0);  // forward states up to t = 3: unchanged
  CHECK(max_abs(f1.slice(1, 4) - f2.slice(1, 4)) > 1e-4);      // from the change on: changed
  CHECK(max_abs(b1.slice(1, 5) - b2.slice(1, 5)) == 0);        // backward states after it: unchanged
  CHECK(max_abs(b1.slice(1, 0, 5) - b2.slice(1, 0, 5)) > 1e-4);
  // Padding: the same sentence in a batch with a longer one (padded after it) gives the same vectors.
  auto longer = words;
  longer.insert(longer.end() - 1, {"over", "the", "lazy", "dog"});
  auto batch = torch::zeros({2, static_cast<int64_t>(longer.size()), 12}, torch::kInt64);
  batch[0].slice(0, 0, static_cast<int64_t>(words.size())) = datasets::words_to_chars(words, 12);
  batch[1] = datasets::words_to_chars(longer, 12);
  const auto alone = elmo->forward(chars_of(words));
  const auto padded = elmo->forward(batch);
  CHECK(max_abs(padded.select(1, 0).slice(1, 0, static_cast<int64_t>(words.size())) - alone.select(1, 0)) < 1e-6);
  CHECK(max_abs(padded.select(1, 0).slice(1, static_cast<int64_t>(words.size()))) == 0);  // padding outputs are 0
}

TEST_CASE("ScalarMix: equal weights give gamma times the mean, weights always sum to 1, layer norm as AllenNLP",
          "[elmo]") {
  torch::manual_seed(3);
  std::vector<Tensor> layers{torch::randn({2, 5, 8}), torch::randn({2, 5, 8}), torch::randn({2, 5, 8})};
  models::ScalarMix mix(3);
  {
    torch::NoGradGuard no_grad;
    mix->gamma.fill_(1.7);
  }
  const auto mean = (layers[0] + layers[1] + layers[2]) / 3;
  CHECK(max_abs(mix->forward(layers) - 1.7 * mean) < 1e-6);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : mix->scalar_parameters->parameters()) p.copy_(torch::randn({1}) * 3);
  }
  CHECK(mix->weights().sum().item<double>() == Approx(1.0).epsilon(1e-6));
  CHECK(mix->weights().min().item<double>() > 0);
  // Fixed weights select one layer, as AllenNLP's docstring example [-9e10, 1, -9e10].
  models::ScalarMix select(models::ScalarMixOptions(3).initial_scalar_parameters({-9e10, 1, -9e10}).trainable(false));
  CHECK(max_abs(select->forward(layers) - layers[1]) < 1e-6);
  CHECK(select->parameters().size() == 4);
  CHECK_FALSE(select->gamma.requires_grad());
  // do_layer_norm: one scalar mean and std over the unmasked elements of each layer.
  auto mask = torch::ones({2, 5}, torch::kBool);
  mask[1].slice(0, 3).fill_(false);
  models::ScalarMix norm(models::ScalarMixOptions(3).do_layer_norm(true));
  Tensor expected = torch::zeros({2, 5, 8});
  for (const auto& t : layers) {
    const auto real = t.masked_select(mask.unsqueeze(-1).expand_as(t));
    const double m = real.mean().item<double>(), var = (real - m).pow(2).mean().item<double>();
    expected = expected + (t - m) / std::sqrt(var + 1e-12) / 3;
  }
  CHECK(max_abs(norm->forward(layers, mask) - expected) < 1e-5);
  // Gradients reach s and gamma.
  mix->forward(layers).sum().backward();
  CHECK(mix->gamma.grad().defined());
  CHECK(max_abs(mix->scalar_parameters->parameters()[0].grad()) > 0);
}

TEST_CASE("LstmWithProjection: cell and projection clipping hold, a one-step cell matches the formulas", "[elmo]") {
  torch::manual_seed(4);
  models::LstmWithProjection lstm(models::LstmWithProjectionOptions(3, 2, 4).cell_clip(0.5).proj_clip(0.1));
  auto x = torch::randn({1, 1, 3}) * 10;
  auto out = lstm->forward(x, torch::ones({1, 1}, torch::kBool));
  CHECK(out.abs().max().item<double>() <= 0.1 + 1e-7);
  // By hand, no clipping: zero state, so only input_linearity and the bias matter.
  models::LstmWithProjection plain(models::LstmWithProjectionOptions(3, 2, 4).cell_clip(0).proj_clip(0));
  x = torch::randn({1, 1, 3});
  auto g = (torch::matmul(x[0][0], plain->input_linearity->weight.t()) + plain->state_linearity->bias).chunk(4);
  auto c = torch::sigmoid(g[0]) * torch::tanh(g[2]);
  auto h = torch::matmul(torch::sigmoid(g[3]) * torch::tanh(c), plain->state_projection->weight.t());
  CHECK(max_abs(plain->forward(x, torch::ones({1, 1}, torch::kBool))[0][0] - h) < 1e-6);
}

TEST_CASE("LstmWithProjection: the fused backward through time gives autograd's outputs and gradients", "[elmo]") {
  struct Setup {
    int64_t hidden, cell;
    double cell_clip, proj_clip;
  };
  for (const bool forward : {true, false}) {
    for (const auto& st : {Setup{3, 5, 0.6, 0.25}, Setup{4, 4, 0.6, 0.25}, Setup{3, 5, 0, 0}}) {
      for (const bool pad : {false, true}) {
        INFO("go_forward " << forward << ", hidden " << st.hidden << ", cell " << st.cell << ", clips " << st.cell_clip
                           << "/" << st.proj_clip << ", padded " << pad);
        torch::manual_seed(5);
        models::LstmWithProjection fused(models::LstmWithProjectionOptions(4, st.hidden, st.cell)
                                             .cell_clip(st.cell_clip)
                                             .proj_clip(st.proj_clip)
                                             .go_forward(forward));
        {
          torch::NoGradGuard no_grad;  // weights large enough for the clips to bite
          for (auto& p : fused->parameters()) p.mul_(3);
        }
        auto reference = std::dynamic_pointer_cast<models::LstmWithProjectionImpl>(fused->clone());
        reference->options.fused(false);
        auto x = torch::randn({3, 6, 4});
        auto mask = torch::ones({3, 6}, torch::kBool);
        if (pad) {
          mask[1].slice(0, 4).fill_(false);  // padding at the end, as in batches of sentences
          mask[2][0] = false;                // and anywhere else
          mask[2][3] = false;
        }
        const auto weights = torch::randn({3, 6, st.hidden});
        auto xf = x.clone().requires_grad_(true), xr = x.clone().requires_grad_(true);
        const auto out_f = fused->forward(xf, mask), out_r = reference->forward(xr, mask);
        CHECK(max_abs(out_f - out_r) < 1e-6);
        if (st.proj_clip > 0) CHECK(out_r.abs().max().item<double>() == Approx(st.proj_clip));  // clipping happened
        (out_f * weights).sum().backward();
        (out_r * weights).sum().backward();
        CHECK(max_abs(xf.grad() - xr.grad()) < 1e-5);
        const auto pf = fused->named_parameters(), pr = reference->named_parameters();
        for (const auto& item : pr) {
          INFO(item.key());
          REQUIRE(pf[item.key()].grad().defined());
          CHECK(max_abs(pf[item.key()].grad() - item.value().grad()) <
                1e-5 * std::max(1.0, max_abs(item.value().grad())));
          CHECK(max_abs(item.value().grad()) > 0);
        }
        // Without gradients the step-by-step loop runs: the same outputs.
        torch::NoGradGuard no_grad;
        CHECK(max_abs(fused->forward(x, mask) - out_r) < 1e-6);
      }
    }
  }
}

TEST_CASE("ELMo learns: validation perplexity falls clearly below the unigram perplexity (learning test)",
          "[elmo][learning]") {
  REQUIRE(fs::exists(datasets::default_fortunes_dir()));
  torch::manual_seed(0);
  auto config = test::small_run("elmo", 800,
                                training::TrainOptions().progress(false).threads(2).epochs(4).lr(5e-3).batch_size(16));
  config.data.name = "fortunes";
  config.options = {{"char_embedding", 8},  {"filters", {1, 16, 2, 16, 3, 32, 4, 64}},
                    {"projection_dim", 32}, {"cell_size", 64},
                    {"vocab_size", 300},    {"dropout", 0.0}};
  TempDir tmp;
  auto run = training::Run::create(config, tmp.str("run"));
  const auto before = run->trainer().evaluate();
  const auto result = run->fit();
  // The unigram baseline of the same validation windows.
  auto corpus = datasets::load_text_corpus(datasets::default_fortunes_dir(), 300, 0.05, 0, true);
  datasets::LanguageModelDataset val(corpus.test_records, corpus.vocab, 20, 20, 800, "val");
  const double unigram = val.unigram_perplexity(corpus.vocab);
  const double after = result["test"]["perplexity"].get<double>();
  INFO("perplexity before " << before["perplexity"] << ", after " << after << ", unigram " << unigram);
  CHECK(before["perplexity"].get<double>() > 250);  // about the vocabulary size: nothing learnt yet
  CHECK(after < 0.8 * unigram);
  CHECK(result["test"]["forward_perplexity"].get<double>() < unigram);
  CHECK(result["test"]["backward_perplexity"].get<double>() < unigram);
}

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
  write_file(tmp.path() / "corpus.txt", text);
  const std::string tiny =
      " --set char_embedding=4 --set filters=[1,8,2,8,3,16] --set projection_dim=8 --set cell_size=16"
      " --set vocab_size=20 --set max_word_length=12";
  auto r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("corpus.txt") + tiny +
                         " --epochs 1 --threads 1 --out " + tmp.str("run"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("test perplexity") && Catch::Contains("forward_perplexity"));
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
  write_file(tmp.path() / "bad-triples.txt", "fair | only two | parts\n");
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
  write_file(tmp.path() / "empty.txt", "%\n%\n");
  r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("empty.txt") + tiny + " --out " +
                    tmp.str("run2"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("is empty"));
  CHECK(test::count_lines(r.err) == 1);
  r = test::run_zoo("train elmo --dataset text --data-dir " + tmp.str("corpus.txt") + " --out " + tmp.str("run3"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("too few for vocab_size 5000"));
}
