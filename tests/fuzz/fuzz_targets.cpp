// libFuzzer targets for everything zoo reads from users' files. One binary; the environment variable
// ZOO_FUZZ_TARGET picks the target:
//   idx         datasets::parse_idx on the bytes (plain or gzip IDX)
//   image       datasets::load_image on the bytes as a file, and load_image_folder with them as image and mask
//   config      a run's config.json: read_json_file (size, nesting depth, JSON), then run_config_from_json
//   checkpoint  training::load_module of a small mlp from the bytes as model.pt
//   text        datasets::read_records of the bytes as a corpus file, then tokens, a vocabulary, LM windows
//   safetensors training::parse_safetensors of the bytes (header length, JSON, every offset, dtype and shape)
//   pickle      training::parse_torch_save_pickle of the bytes as a torch.save data.pkl (each storage as large as the
//   pickle says, up to 1 MiB),
//               then the state_dict chosen from it
// Every input must end in a result or in an exception (std::exception, c10::Error): anything else (a crash, an
// abort, a leak or overflow that the sanitizers see, a hang) is a finding.
//
// With ZOO_FUZZ_SEED=PATH in the environment, the target writes a valid input to PATH and exits (seed corpus).
#include "datasets/idx.h"
#include "datasets/images.h"
#include "datasets/segmentation.h"
#include "datasets/text.h"
#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/run.h"
#include "training/safetensors.h"
#include "training/torch_save.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using namespace zoo;

namespace {

fs::path scratch() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("zoo-fuzz-" + std::to_string(getpid()));
    fs::create_directories(d / "images");
    fs::create_directories(d / "masks");
    return d;
  }();
  return dir;
}

void write_file(const fs::path& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

torch::nn::AnyModule small_mlp() { return models::build_model("mlp", {{"hidden", {4}}}).first; }

std::string target;

void write_seed(const std::string& path) {
  torch::manual_seed(0);  // the same seeds every time, so a run with -seed=N is repeatable
  if (target == "idx") {
    const uint8_t idx[] = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6};
    write_file(path, idx, sizeof idx);
  } else if (target == "image") {
    datasets::save_png(torch::randint(0, 11, {1, 6, 5}).to(torch::kFloat) / 255.0, path);
  } else if (target == "config") {
    std::ofstream(path) << R"({"model":"mlp","options":{"hidden":[4]},"data":{"name":"fashion-mnist","limit":10},)"
                        << R"("train":{"epochs":1,"lr":0.01},"prior":{"kind":"gaussian","lambda":0.1}})";
  } else if (target == "checkpoint") {
    training::save_module(*small_mlp().ptr(), path);
  } else if (target == "safetensors") {
    std::ofstream(path, std::ios::binary)
        << training::serialize_safetensors({{"w", torch::randn({2, 3})},
                                            {"b", torch::tensor({true, false})},
                                            {"n", torch::tensor({int64_t{5}})},
                                            {"h", torch::randn({3}).to(torch::kBFloat16)}},
                                           {{"zoo_model", "mlp"}});
  } else if (target == "pickle") {
    // torch.save({"model": OrderedDict(w=2x2 view, b=its transpose), "epoch": 3}), opcode by opcode.
    auto str = [](const std::string& s) { return "X" + std::string{static_cast<char>(s.size()), 0, 0, 0} + s; };
    auto tensor = [&](int offset, int stride0, int stride1) {
      return "ctorch._utils\n_rebuild_tensor_v2\n((" + str("storage") + "ctorch\nFloatStorage\n" + str("0") +
             str("cpu") + "K\x10tQK" + std::string{static_cast<char>(offset)} + "K\x02K\x02\x86K" +
             std::string{static_cast<char>(stride0)} + "K" + std::string{static_cast<char>(stride1)} + "\x86\x89}tR";
    };
    std::ofstream(path, std::ios::binary) << "\x80\x02}(" + str("model") + "ccollections\nOrderedDict\n)R(" + str("w") +
                                                 tensor(0, 2, 1) + str("b") + tensor(4, 1, 2) + "u" + str("epoch") +
                                                 "K\x03u.";
  } else if (target == "text") {
    std::ofstream(path) << "A day for firm decisions!!!!!  Or is it?\n%\nDon't 5.5 o'clock \xc3\x87"
                           "a va?\n\n"
                           "two\n%\nA fair price.\n";
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  const char* name = std::getenv("ZOO_FUZZ_TARGET");
  target = name ? name : "";
  if (target != "idx" && target != "image" && target != "config" && target != "checkpoint" && target != "text" &&
      target != "safetensors" && target != "pickle") {
    fmt::print(stderr,
               "zoo_fuzz: set ZOO_FUZZ_TARGET to idx, image, config, checkpoint, text, safetensors or pickle\n");
    std::exit(2);
  }
  if (const char* seed = std::getenv("ZOO_FUZZ_SEED")) {
    write_seed(seed);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    if (target == "idx") {
      datasets::parse_idx(data, size, "fuzz");
    } else if (target == "image") {
      write_file(scratch() / "images" / "a.png", data, size);
      write_file(scratch() / "masks" / "a.png", data, size);
      datasets::load_image((scratch() / "images" / "a.png").string());
      datasets::load_image_folder(scratch().string(), 11, 1);
    } else if (target == "config") {
      // As zoo reads it: a file, checked for its kind, size and nesting depth, then parsed and read.
      write_file(scratch() / "config.json", data, size);
      training::run_config_from_json(training::read_json_file((scratch() / "config.json").string()), "fuzz");
    } else if (target == "checkpoint") {
      static auto model = small_mlp();
      write_file(scratch() / "model.pt", data, size);
      training::load_module(*model.ptr(), (scratch() / "model.pt").string());
    } else if (target == "safetensors") {
      training::parse_safetensors(data, size, "fuzz");
    } else if (target == "pickle") {
      const auto file = training::parse_torch_save_pickle(
          std::string(reinterpret_cast<const char*>(data), size),
          [](const std::string&, uint64_t expected) {
            return std::vector<char>(std::min<uint64_t>(expected, 1 << 20));
          },
          "fuzz");
      training::saved_state_dict(file, "fuzz", "", nullptr);
    } else if (target == "text") {
      write_file(scratch() / "corpus.txt", data, size);
      const auto records = datasets::read_records((scratch() / "corpus.txt").string());
      std::vector<std::vector<std::string>> tokens;
      for (const auto& r : records) tokens.push_back(datasets::tokenize(r));
      const auto vocab = datasets::Vocabulary::build(tokens, 4);
      datasets::LanguageModelDataset lm(tokens, vocab, 3, 6, 0, "fuzz");
      lm.get(torch::arange(lm.size()));
      lm.unigram_perplexity(vocab);
    }
  } catch (const std::exception&) {
    // Refused with a message: what should happen to bad input.
  }
  return 0;
}
