// ELMo: the character CNN + highway, the biLM's directions, the scalar mix, the LSTM with projection, and the
// sheet's claims (context-free layer 0, contextual layers 1 and 2, a language model better than unigrams).
#include "models/elmo.h"
#include "datasets/text.h"
#include "helpers.h"
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

}  // namespace

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
