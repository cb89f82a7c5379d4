// zoo experiment elmo-senses: does ELMo tell word senses apart? For each triple (a word in sentence A, in B
// with the same sense, in C with another sense) and each layer, the triple counts when cos(A, B) > cos(A, C).
// Layer 0 sees the word alone, so its cosines are always 1 and no triple counts; the sheet's claim is that the
// contextual layers count more often.
#include "core/files.h"
#include "datasets/text.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"
#include "training/probe.h"
#include "training/run.h"
#include "training/trainer.h"

#include <fmt/format.h>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace zoo::cli {

namespace {

/// word | sentence A | sentence B (the sense of A) | sentence C (another sense)
const char* const kSenseTriples =
    R"(fair | I went to the fair last Saturday. | We ate cotton candy at the county fair. | I do not believe your attitude is fair.
fair | The judge was fair to both sides. | That is not a fair price for a car. | The fair had a big wheel and games.
bank | She put her money in the bank. | The bank raised its interest rates. | We sat on the bank of the river.
bank | They fished from the river bank. | The boat drifted toward the muddy bank. | He robbed a bank in the city.
light | Turn on the light, it is dark. | The light in the kitchen is broken. | This box is light enough to carry.
light | The feather is very light. | Travel light and carry one bag. | The light from the sun is bright.
right | Turn right at the next corner. | The door on the right is open. | You have the right to remain silent.
right | You are right about that. | He was right and I was wrong. | Take the road on the right.
bear | A bear lives in the woods. | The bear ate the honey. | I cannot bear this noise any longer.
bear | She could not bear the pain. | How do you bear such a boring job? | The brown bear climbed a tree.
watch | He looked at his watch and sighed. | My watch is five minutes slow. | Watch the children while I cook.
watch | We watch television every night. | Watch out for the dog! | She wore a gold watch.
match | He lit a match in the dark. | The match burned his fingers. | We won the football match.
match | The tennis match lasted three hours. | Who won the match last night? | Strike a match to light the candle.
point | What is the point of this meeting? | I do not see the point of arguing. | The pencil has a sharp point.
spring | Flowers bloom in the spring. | We plant the garden in spring. | The spring in the old bed is broken.
fall | Leaves turn red in the fall. | We visited the mountains last fall. | Be careful not to fall down the stairs.
ring | She wore a diamond ring. | He gave her a gold ring. | I heard the phone ring twice.
rock | He threw a rock into the lake. | The house is built on solid rock. | They like to listen to rock music.
left | He left the house early. | She left her keys at work. | Turn left at the light.
kind | She is a kind and gentle person. | It was kind of you to help. | What kind of music do you like?
mean | What do you mean by that? | Words mean different things to people. | He was mean to his little brother.
present | She gave him a birthday present. | The present was wrapped in paper. | All students were present today.
fine | The weather is fine today. | I feel fine, thank you. | He had to pay a fine for parking.
club | He joined the chess club. | The club meets every Friday. | The caveman carried a wooden club.
lead | Lead is a heavy metal. | The pipes were made of lead. | You lead and we will follow.
saw | I saw a movie last night. | She saw him at the store. | He cut the wood with a saw.
change | Keep the change from the dollar. | I have no change for the bus. | Things change over time.
party | We had a party for her birthday. | The party lasted until midnight. | He voted for the other party.
plant | Water the plant every day. | The plant grew near the window. | The car plant closed last year.
train | We took the train to the city. | The train was late again. | They train dogs to find people.
date | What is the date today? | Write the date on the letter. | He asked her out on a date.
)";

struct Triple {
  std::string word;
  std::vector<std::string> sentences;  // A, B (same sense), C (other sense)
};

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

std::vector<Triple> parse_triples(const std::string& text, const std::string& where) {
  std::vector<Triple> out;
  std::stringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    std::vector<std::string> parts;
    std::stringstream fields(line);
    std::string field;
    while (std::getline(fields, field, '|')) parts.push_back(trim(field));
    if (parts.size() != 4 || parts[0].empty())
      throw std::invalid_argument(where + ":" + std::to_string(number) +
                                  ": expected 'word | sentence A | same sense | other sense'");
    out.push_back({parts[0], {parts[1], parts[2], parts[3]}});
  }
  if (out.empty()) throw std::invalid_argument(where + " holds no triples");
  return out;
}

struct SensesArgs {
  std::string run, triples, device = "cpu", out, checkpoint = "best";
  bool json = false, no_plot = false;
  int64_t threads = 0;
};

void run_senses(const SensesArgs& a) {
  training::apply_threads(a.threads);
  std::string text = kSenseTriples, where = "the built-in triples";
  if (!a.triples.empty()) {
    std::ifstream in(a.triples);
    if (!in) throw std::runtime_error("cannot read " + a.triples);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
    where = a.triples;
  }
  const auto triples = parse_triples(text, where);
  auto [config, model] = training::load_run_model(a.run, a.device, a.checkpoint);
  auto* elmo = dynamic_cast<models::ElmoImpl*>(model.ptr().get());
  if (!elmo) throw std::invalid_argument(a.run + " is a run of '" + config.model + "'; elmo-senses needs an elmo run");
  const bool lowercase = config.data.options.value("lowercase", true);
  const int64_t n_layers = elmo->options.num_layers() + 2;  // 0..L and the mix
  std::vector<int64_t> wins(static_cast<size_t>(n_layers), 0);
  std::vector<double> same(static_cast<size_t>(n_layers), 0), other(static_cast<size_t>(n_layers), 0);
  for (const auto& t : triples) {
    const auto word = datasets::tokenize(t.word, lowercase);
    if (word.size() != 1) throw std::invalid_argument("'" + t.word + "' is not one token");
    std::vector<torch::Tensor> v;  // [layers, D] each
    for (const auto& s : t.sentences) {
      const auto tokens = datasets::tokenize(s, lowercase);
      const auto it = std::find(tokens.begin(), tokens.end(), word[0]);
      if (it == tokens.end()) throw std::invalid_argument("'" + t.word + "' is not a token of \"" + s + "\"");
      v.push_back(elmo->sentence_vectors(tokens).select(1, it - tokens.begin()));
    }
    const auto ab = torch::cosine_similarity(v[0], v[1], 1), ac = torch::cosine_similarity(v[0], v[2], 1);
    for (int64_t k = 0; k < n_layers; ++k) {
      const double x = ab[k].item<double>(), y = ac[k].item<double>();
      same[static_cast<size_t>(k)] += x;
      other[static_cast<size_t>(k)] += y;
      wins[static_cast<size_t>(k)] += x > y + 1e-6;
    }
  }
  const double n = static_cast<double>(triples.size());
  nlohmann::json out{{"triples", triples.size()}, {"layers", nlohmann::json::object()}};
  for (int64_t k = 0; k < n_layers; ++k) {
    const auto i = static_cast<size_t>(k);
    const std::string name = k == n_layers - 1 ? "mix" : std::to_string(k);
    out["layers"][name] = {{"fraction", static_cast<double>(wins[i]) / n},
                           {"mean_cos_same", same[i] / n},
                           {"mean_cos_other", other[i] / n}};
  }
  const std::string dir = a.out.empty() ? experiment_dir("elmo-senses") : a.out;
  std::filesystem::create_directories(dir);
  const auto csv_path = (std::filesystem::path(dir) / "elmo_senses.csv").string();
  {
    std::ostringstream csv;
    csv << "layer,fraction,mean_cos_same,mean_cos_other\n";
    for (auto it = out["layers"].begin(); it != out["layers"].end(); ++it)
      csv << fmt::format("{},{},{:.9g},{:.9g}\n", it.key(), it.value()["fraction"].get<double>(),
                         it.value()["mean_cos_same"].get<double>(), it.value()["mean_cos_other"].get<double>());
    write_text_atomically(csv_path, csv.str());
  }
  const auto png = (std::filesystem::path(dir) / "elmo_senses.png").string();
  if (!a.no_plot)
    run_gnuplot(
        "set title 'ELMo: how often a word is closer to its same-sense use, per layer'\n"
        "set ylabel 'fraction of triples'\nset yrange [0:1]\nset style fill solid 0.6\nset boxwidth 0.6\n"
        "set grid ytics\nset datafile separator ','\n"
        "plot '" +
            csv_path + "' every ::1 using 0:2:xtic(1) with boxes notitle\n",
        png);
  if (a.json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  // Distances 1 - cos: a short run's cosines all read 1.0000 to four decimals, its distances do not.
  fmt::print("{} triples: how often the same-sense pair is more similar than the other-sense pair\n", triples.size());
  fmt::print("layer  fraction  mean 1-cos (same sense)  mean 1-cos (other sense)\n");
  for (auto it = out["layers"].begin(); it != out["layers"].end(); ++it)
    fmt::print("{:<5}  {:8.3f}  {:23.4g}  {:24.4g}\n", it.key(), it.value()["fraction"].get<double>(),
               1 - it.value()["mean_cos_same"].get<double>(), 1 - it.value()["mean_cos_other"].get<double>());
  fmt::print("wrote {}{}\n", csv_path, a.no_plot ? "" : " and " + png);
}

// zoo experiment elmo-mix: the downstream half of ELMo. The biLM stays frozen; per task a ScalarMix (softmax(s),
// gamma) and a linear classifier are trained on its layers (training/probe.h), and the learned weights say which
// layers the task draws on. Two tasks made from the text itself:
//   - sentence level: which file a record comes from (by default four fortune files), from the mean of its tokens;
//   - token level: was the word capitalised in the original text (a name, or a sentence's first word)? The biLM of
//     a lowercasing run never saw case, so the answer has to come from the word itself (layer 0 knows names) and
//     from its place in the sentence (the contextual layers know what came before).
// Each is also probed with layer 0 alone and the top layer alone.

struct MixArgs {
  std::string run, data_dir, files = "computers,politics,science,literature", device = "cpu", out, checkpoint = "best";
  int64_t per_file = 250, max_tokens = 40, steps = 300, threads = 0;
  uint64_t seed = 0;
  bool json = false;
};

struct TaskData {
  std::string name;
  int64_t classes = 0;
  std::vector<torch::Tensor> layers;  // each [N, D]
  torch::Tensor labels, train, test;
};

/// Every fourth record (shifted by the seed) is a test record, the rest train: a split by record, so the tokens
/// of one record are never on both sides.
bool test_record(int64_t record, uint64_t seed) { return (static_cast<uint64_t>(record) + seed) % 4 == 0; }

nlohmann::json probe_json(const training::ProbeResult& r) {
  return {{"weights", r.weights},
          {"gamma", r.gamma},
          {"train_accuracy", r.train_accuracy},
          {"test_accuracy", r.test_accuracy}};
}

void run_mix(const MixArgs& a) {
  training::apply_threads(a.threads);
  auto [config, model] = training::load_run_model(a.run, a.device, a.checkpoint);
  auto* elmo = dynamic_cast<models::ElmoImpl*>(model.ptr().get());
  if (!elmo) throw std::invalid_argument(a.run + " is a run of '" + config.model + "'; elmo-mix needs an elmo run");
  const bool lowercase = config.data.options.value("lowercase", true);
  const int64_t layer_count = elmo->options.num_layers() + 1;  // 0..L
  const std::string dir = a.data_dir.empty() ? datasets::default_fortunes_dir() : a.data_dir;
  std::vector<std::string> files;
  for (std::stringstream list(a.files); list.good();) {
    std::string name;
    std::getline(list, name, ',');
    if (!name.empty()) files.push_back(name);
  }
  if (files.size() < 2) throw std::invalid_argument("--files needs at least two files (one class each)");

  std::vector<std::vector<torch::Tensor>> pooled(static_cast<size_t>(layer_count)),
      token_layers(static_cast<size_t>(layer_count));
  std::vector<int64_t> file_labels, record_of_item, token_labels, record_of_token;
  int64_t record = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    const auto path =
        std::filesystem::path(files[f]).is_absolute() ? files[f] : (std::filesystem::path(dir) / files[f]).string();
    const auto records = datasets::read_records(path);
    int64_t taken = 0;
    for (const auto& text : records) {
      if (taken >= a.per_file) break;
      auto original = datasets::tokenize(text, false);
      if (original.size() < 2) continue;
      if (static_cast<int64_t>(original.size()) > a.max_tokens) original.resize(static_cast<size_t>(a.max_tokens));
      std::vector<std::string> tokens = original;
      if (lowercase)
        for (auto& t : tokens)
          for (auto& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      const auto v = elmo->sentence_vectors(tokens);  // [L + 2, T, D]: layers 0..L, then the model's own mix
      for (int64_t j = 0; j < layer_count; ++j) {
        pooled[static_cast<size_t>(j)].push_back(v[j].mean(0));
        token_layers[static_cast<size_t>(j)].push_back(v[j]);
      }
      file_labels.push_back(static_cast<int64_t>(f));
      record_of_item.push_back(record);
      for (const auto& t : original) {
        const auto first = static_cast<unsigned char>(t[0]);
        token_labels.push_back(std::isalpha(first) ? (std::isupper(first) ? 1 : 0) : -1);  // -1: not a word
        record_of_token.push_back(record);
      }
      ++taken;
      ++record;
    }
    if (taken == 0) throw std::runtime_error(path + " holds no record of two or more tokens");
  }
  auto split = [&](const std::vector<int64_t>& records_of, const std::vector<int64_t>& labels) {
    std::vector<int64_t> train, test;
    for (size_t i = 0; i < records_of.size(); ++i) {
      if (labels[i] < 0) continue;
      (test_record(records_of[i], a.seed) ? test : train).push_back(static_cast<int64_t>(i));
    }
    return std::make_pair(torch::tensor(train, torch::kInt64), torch::tensor(test, torch::kInt64));
  };
  std::vector<TaskData> tasks(2);
  tasks[0].name = fmt::format("source file ({} files, sentence)", files.size());
  tasks[0].classes = static_cast<int64_t>(files.size());
  tasks[0].labels = torch::tensor(file_labels, torch::kInt64);
  std::tie(tasks[0].train, tasks[0].test) = split(record_of_item, file_labels);
  tasks[1].name = "capitalised (token)";
  tasks[1].classes = 2;
  tasks[1].labels = torch::tensor(token_labels, torch::kInt64).clamp_min(0);
  std::tie(tasks[1].train, tasks[1].test) = split(record_of_token, token_labels);
  for (int64_t j = 0; j < layer_count; ++j) {
    tasks[0].layers.push_back(torch::stack(pooled[static_cast<size_t>(j)]));
    tasks[1].layers.push_back(torch::cat(token_layers[static_cast<size_t>(j)]));
  }

  nlohmann::json out{{"run", a.run},
                     {"layers", layer_count},
                     {"lowercase", lowercase},
                     {"files", files},
                     {"tasks", nlohmann::json::array()}};
  for (const auto& t : tasks) {
    const auto options = training::ProbeOptions().steps(a.steps).seed(a.seed);
    const auto mix = training::train_probe(t.layers, t.labels, t.classes, t.train, t.test, options);
    const auto bottom =
        training::train_probe(t.layers, t.labels, t.classes, t.train, t.test, training::ProbeOptions(options).layer(0));
    const auto top = training::train_probe(t.layers, t.labels, t.classes, t.train, t.test,
                                           training::ProbeOptions(options).layer(layer_count - 1));
    const double majority = torch::bincount(t.labels.index_select(0, t.test), {}, t.classes).max().item<double>() /
                            static_cast<double>(std::max<int64_t>(1, t.test.numel()));
    out["tasks"].push_back({{"task", t.name},
                            {"classes", t.classes},
                            {"train_items", t.train.numel()},
                            {"test_items", t.test.numel()},
                            {"majority_accuracy", majority},
                            {"mix", probe_json(mix)},
                            {"layer_0", probe_json(bottom)},
                            {"top_layer", probe_json(top)}});
  }
  const std::string out_dir = a.out.empty() ? experiment_dir("elmo-mix") : a.out;
  std::filesystem::create_directories(out_dir);
  const auto json_path = (std::filesystem::path(out_dir) / "elmo_mix.json").string();
  write_text_atomically(json_path, out.dump(2) + "\n");
  if (a.json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print(
      "ELMo's learned scalar mix per task (the biLM frozen; test accuracy of a linear probe){}\n",
      lowercase ? "" : "\nnote: this run keeps case, so the capitalisation task can be read off layer 0's characters");
  fmt::print("{:<34} {:>6} {:>6}  {:<24} {:>6}  {:>6} {:>8} {:>9} {:>9}\n", "task", "train", "test",
             "softmax(s), layers 0..", "gamma", "mix", "layer 0", "top layer", "majority");
  for (const auto& t : out["tasks"]) {
    std::string weights;
    for (const auto& w : t["mix"]["weights"]) weights += fmt::format("{:.3f} ", w.get<double>());
    fmt::print("{:<34} {:>6} {:>6}  {:<24} {:>6.3f}  {:>6.3f} {:>8.3f} {:>9.3f} {:>9.3f}\n",
               t["task"].get<std::string>(), t["train_items"].get<int64_t>(), t["test_items"].get<int64_t>(), weights,
               t["mix"]["gamma"].get<double>(), t["mix"]["test_accuracy"].get<double>(),
               t["layer_0"]["test_accuracy"].get<double>(), t["top_layer"]["test_accuracy"].get<double>(),
               t["majority_accuracy"].get<double>());
  }
  fmt::print("wrote {}\n", json_path);
}

}  // namespace

void add_elmo_senses(CLI::App& experiment) {
  auto a = std::make_shared<SensesArgs>();
  auto* cmd = experiment.add_subcommand(
      "elmo-senses",
      "Per ELMo layer: how often a word's same-sense pair of sentences is more similar than another sense");
  cmd->add_option("run", a->run, "Run directory of an elmo model")->required();
  add_checkpoint_option(cmd, a->checkpoint);
  cmd->add_option("--triples", a->triples,
                  "File of lines 'word | sentence A | same sense | other sense' (default: 32 built-in triples)");
  cmd->add_flag("--json", a->json, "Print JSON");
  cmd->add_option("--out", a->out, "Output directory (default runs/elmo-senses-DATE-TIME)");
  cmd->add_flag("--no-plot", a->no_plot, "Write the CSV only");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->callback([a] { run_senses(*a); });
}

void add_elmo_mix(CLI::App& experiment) {
  auto a = std::make_shared<MixArgs>();
  auto* cmd = experiment.add_subcommand(
      "elmo-mix",
      "Train ELMo's scalar mix per downstream task on the frozen biLM: which file a record comes from (sentence) "
      "and whether a word was capitalised (token); the learned layer weights and gamma, against one layer alone");
  cmd->add_option("run", a->run, "Run directory of an elmo model")->required();
  add_checkpoint_option(cmd, a->checkpoint);
  cmd->add_option("--data-dir", a->data_dir,
                  "Directory of the files (default: the fortunes, /usr/share/games/fortunes)");
  cmd->add_option("--files", a->files,
                  "Comma-separated files, one class each, in --data-dir or absolute (default "
                  "computers,politics,science,literature)");
  cmd->add_option("--per-file", a->per_file, "Records taken from each file, at most (default 250)")->check(positive());
  cmd->add_option("--max-tokens", a->max_tokens, "Tokens kept of each record (default 40)")->check(positive());
  cmd->add_option("--steps", a->steps, "Full-batch Adam steps of each probe (default 300)")->check(positive());
  cmd->add_option("--seed", a->seed, "Seed of the probes and of the train/test split (default 0)");
  cmd->add_flag("--json", a->json, "Print JSON");
  cmd->add_option("--out", a->out, "Output directory (default runs/elmo-mix-DATE-TIME)");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
  cmd->callback([a] { run_mix(*a); });
}

}  // namespace zoo::cli
