// `zoo embed`: ELMo's contextual word vectors. Prints each token's vector of one layer (or the scalar mix), or
// compares one word's vectors in two sentences layer by layer (--compare ... --word W).
#include "datasets/text.h"
#include "models/elmo.h"
#include "tools/cli/cli.h"
#include "training/run.h"

#include <fmt/format.h>
#include <algorithm>
#include <cstdio>

namespace zoo::cli {

using nlohmann::json;

namespace {

struct EmbedArgs {
  std::string run, sentence, layer = "mix", word, device = "cpu", checkpoint = "best";
  std::vector<std::string> compare;
  bool json = false;
  int64_t values = 4, threads = 0;
};

struct Embedder {
  training::RunConfig config;
  torch::nn::AnyModule model;
  models::ElmoImpl* elmo = nullptr;

  std::vector<std::string> tokens(const std::string& sentence) const {
    const bool lowercase = config.data.options.value("lowercase", true);
    auto words = datasets::tokenize(sentence, lowercase);
    if (words.empty()) throw std::invalid_argument("no words in \"" + sentence + "\"; give a sentence");
    return words;
  }
  torch::Tensor vectors(const std::vector<std::string>& words) { return elmo->sentence_vectors(words); }
  int64_t layer_index(const std::string& layer) const {
    const int64_t top = elmo->options.num_layers();
    if (layer == "mix") return top + 1;
    try {
      size_t used = 0;
      const int64_t k = std::stoll(layer, &used);
      if (used == layer.size() && k >= 0 && k <= top) return k;
    } catch (const std::exception&) {
    }
    throw std::invalid_argument("--layer must be 0.." + std::to_string(top) + " or mix, got '" + layer + "'");
  }
  std::string layer_name(int64_t k) const { return k == elmo->options.num_layers() + 1 ? "mix" : std::to_string(k); }
};

Embedder open(const EmbedArgs& a) {
  Embedder e;
  auto [config, model] = training::load_run_model(a.run, a.device, a.checkpoint);
  e.config = config;
  e.model = model;
  e.elmo = dynamic_cast<models::ElmoImpl*>(e.model.ptr().get());
  if (!e.elmo) throw std::invalid_argument(a.run + " is a run of '" + config.model + "'; zoo embed needs an elmo run");
  return e;
}

void print_vectors(const EmbedArgs& a, Embedder& e) {
  const auto words = e.tokens(a.sentence);
  const int64_t k = e.layer_index(a.layer);
  const auto v = e.vectors(words)[k];
  if (a.json) {
    json out{{"layer", e.layer_name(k)}, {"tokens", words}, {"vectors", json::array()}};
    for (int64_t i = 0; i < v.size(0); ++i) {
      const auto row = v[i].contiguous();
      out["vectors"].push_back(std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel()));
    }
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print("layer {}, {} values per token\n", e.layer_name(k), static_cast<long long>(v.size(1)));
  size_t width = 5;
  for (const auto& w : words) width = std::max(width, w.size());
  for (int64_t i = 0; i < v.size(0); ++i) {
    std::string first;
    for (int64_t j = 0; j < std::min<int64_t>(a.values, v.size(1)); ++j)
      first += fmt::format("{}{:.4f}", j ? ", " : "", v[i][j].item<double>());
    fmt::print("{:<{}}  norm {:8.4f}  [{}, ...]\n", words[static_cast<size_t>(i)], width, v[i].norm().item<double>(),
               first);
  }
}

void compare(const EmbedArgs& a, Embedder& e) {
  if (a.word.empty()) throw std::invalid_argument("--compare needs --word W: the word whose vectors to compare");
  const bool lowercase = e.config.data.options.value("lowercase", true);
  const auto target = datasets::tokenize(a.word, lowercase);
  if (target.size() != 1) throw std::invalid_argument("--word must be one token, got '" + a.word + "'");
  std::vector<torch::Tensor> found;
  for (const auto& sentence : a.compare) {
    const auto words = e.tokens(sentence);
    const auto it = std::find(words.begin(), words.end(), target[0]);
    if (it == words.end()) {
      std::string list;
      for (const auto& w : words) list += (list.empty() ? "" : " ") + w;
      throw std::invalid_argument("'" + target[0] + "' is not a token of \"" + sentence + "\" (tokens: " + list + ")");
    }
    found.push_back(e.vectors(words).select(1, it - words.begin()));  // [layers + 1, D]
  }
  const auto cos = torch::cosine_similarity(found[0], found[1], 1);
  json out{{"word", target[0]}, {"sentences", a.compare}, {"cosine", json::object()}};
  for (int64_t k = 0; k < cos.size(0); ++k) out["cosine"][e.layer_name(k)] = cos[k].item<double>();
  if (a.json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print("cosine similarity of '{}' between the two sentences\n", target[0]);
  for (int64_t k = 0; k < cos.size(0); ++k)
    fmt::print("layer {:<4} {:.4f}{}\n", e.layer_name(k), cos[k].item<double>(),
               k == 0 ? "  (context-free: always 1)" : "");
}

}  // namespace

void add_embed(CLI::App& app) {
  auto a = std::make_shared<EmbedArgs>();
  auto* cmd = app.add_subcommand("embed", "ELMo's contextual word vectors of a sentence, or one word compared in two");
  cmd->add_option("run", a->run, "Run directory of an elmo model")->required();
  add_checkpoint_option(cmd, a->checkpoint);
  auto* sentence = cmd->add_option("sentence", a->sentence, "The sentence to embed");
  auto* cmp = cmd->add_option("--compare", a->compare, "Two sentences: cosine similarity of --word's vectors per layer")
                  ->expected(2);
  sentence->excludes(cmp);
  cmd->add_option("--word", a->word, "With --compare: the word to compare (it must occur in both sentences)");
  cmd->add_option("--layer", a->layer, "Layer to print: 0 (context-free), 1, 2 or mix (default mix)");
  cmd->add_flag("--json", a->json, "Print JSON: the full vectors (or the cosines with --compare)");
  cmd->add_option("--values", a->values, "Without --json: how many first values to print per token (default 4)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->callback([a, cmd] {
    if (a->sentence.empty() && a->compare.empty())
      throw std::invalid_argument("zoo embed needs a sentence, or --compare S1 S2 --word W");
    training::apply_threads(a->threads);
    auto e = open(*a);
    if (!a->compare.empty()) {
      if (cmd->count("--layer") > 0) throw std::invalid_argument("--compare prints every layer; leave out --layer");
      compare(*a, e);
    } else {
      if (!a->word.empty()) throw std::invalid_argument("--word goes with --compare");
      print_vectors(*a, e);
    }
  });
}

}  // namespace zoo::cli
