// Python interop: `zoo export` (a run -> TorchScript that Python can load and call), `zoo import` (weights of
// a TorchScript module or a torch.save state_dict -> a zoo run), `zoo predict` (any TorchScript module on an
// image, a folder of images, or random input).
#include "datasets/classes.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "training/checkpoint.h"
#include "training/export.h"
#include "training/messages.h"
#include "training/precision.h"
#include "training/run.h"
#include "training/safetensors.h"
#include "training/torch_save.h"
#include "training/trainer.h"
#include "training/weights.h"

#include "onnx_export_py.h"

#include <fmt/format.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

extern char** environ;

namespace zoo::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using training::first_line;

std::vector<int64_t> parse_shape(const std::string& text, const std::string& flag) {
  std::vector<int64_t> dims;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    size_t used = 0;
    int64_t d = 0;
    try {
      d = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size() || d < 1)
      throw std::invalid_argument(flag + " must be positive sizes separated by commas, e.g. 1,1,28,28; got '" + text +
                                  "'");
    dims.push_back(d);
  }
  if (dims.empty()) throw std::invalid_argument(flag + " is empty; give e.g. 1,1,28,28");
  return dims;
}

/// Weights of any file zoo reads (training::read_weights), saying which entry of a checkpoint dict it took.
std::map<std::string, torch::Tensor> read_weights(const std::string& path, const std::string& key) {
  std::string chosen;
  auto tensors = training::read_weights(path, key, &chosen);
  if (key.empty() && !chosen.empty()) fmt::print("reading entry '{}' of {} (the one state_dict in it)\n", chosen, path);
  return tensors;
}

torch::jit::Module load_torchscript(const std::string& path, torch::jit::ExtraFilesMap* extra = nullptr) {
  if (!fs::exists(path)) throw std::runtime_error("missing " + path);
  const auto kind = training::describe_torch_file(path);
  if (kind != "TorchScript")
    throw std::runtime_error(path + " is " + kind +
                             ", not a TorchScript module; in Python save it with "
                             "torch.jit.save(torch.jit.script(model), PATH) or torch.jit.save(torch.jit.trace(model, "
                             "example), PATH)");
  try {
    if (extra) return torch::jit::load(path, torch::kCPU, *extra);
    return torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + " is not a loadable TorchScript module (" + first_line(e.what_without_backtrace()) +
                             ")");
  }
}

// ---- zoo export ------------------------------------------------------------------------------------------

struct ExportArgs {
  std::string run, out, example_shape, checkpoint = "best", format = "torchscript", python = "/usr/bin/python3";
  int64_t threads = 0, opset = 13;
  bool force = false, dynamic_batch = false;
};

/// Where zoo export writes: --out, or RUN.ts.pt beside the run directory (never inside it: a run's own
/// model.pt has the same name as the export Python users expect, and overwriting it would lose the checkpoint).
/// A path beside the run directory: RUN + suffix (runs/mlp -> runs/mlp.ts.pt), relative when it can be.
std::string beside_run(const std::string& run, const std::string& suffix) {
  std::error_code ec;
  const auto dir = fs::weakly_canonical(fs::absolute(run), ec);
  auto name = dir.filename().string();
  if (ec || name.empty()) name = "export";
  auto out = (fs::relative(dir.parent_path(), fs::current_path(), ec) / (name + suffix)).lexically_normal().string();
  if (ec) out = (dir.parent_path() / (name + suffix)).string();
  return out;
}

/// An output file that is no run's own file and, without --force, does not exist.
void check_output(const std::string& out, bool force) {
  if (const auto run = training::run_owning(out))
    throw std::invalid_argument(
        fmt::format("--out {} is a file of the run in {}; exporting there would destroy it "
                    "(even with --force); choose another --out",
                    out, *run));
  std::error_code ec;
  if (fs::is_directory(out, ec))
    throw std::invalid_argument(
        fmt::format("--out {} is a directory; give a file name such as {}/model.ts.pt", out, out));
  if (fs::exists(out, ec) && !force)
    throw std::invalid_argument(fmt::format("{} exists; add --force to replace it, or choose another --out", out));
}

std::string export_path(const ExportArgs& a) {
  std::string out = a.out.empty() ? beside_run(a.run, a.format == "onnx" ? ".onnx" : ".ts.pt") : a.out;
  check_output(out, a.force);
  return out;
}

/// zoo export --format safetensors: model.safetensors and config.json in a directory (RUN.hf/ beside the run by
/// default), as Hugging Face repositories hold them; the header's __metadata__ names the zoo model and options.
void export_safetensors(const ExportArgs& a, const training::RunConfig& config, torch::nn::Module& model) {
  const fs::path file = a.out.empty() ? fs::path(beside_run(a.run, ".hf")) / "model.safetensors" : fs::path(a.out);
  if (file.extension() != ".safetensors")
    throw std::invalid_argument("--out " + file.string() + " must end in .safetensors");
  const auto dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  const auto config_path = (dir / "config.json").string();
  check_output(file.string(), a.force);
  check_output(config_path, a.force);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : model.named_parameters()) tensors[p.key()] = p.value();
  for (const auto& b : model.named_buffers()) tensors[b.key()] = b.value();
  const auto options = config.options.dump();
  const auto bytes = training::serialize_safetensors(
      tensors, {{"format", "pt"}, {"zoo_model", config.model}, {"zoo_options", options}});
  const json hf_config = {{"model_type", "zoo-" + config.model},
                          {"zoo_model", config.model},
                          {"zoo_options", config.options},
                          {"torch_dtype", "float32"},
                          {"source_run", a.run}};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create " + dir.string() + ": " + ec.message());
  zoo::write_file_atomically(file.string(), [&](const std::string& tmp) { zoo::write_bytes(tmp, bytes); });
  zoo::write_text_atomically(config_path, hf_config.dump(2) + "\n");
  fmt::print("exported {} ({}) to {} ({} tensors, {} bytes) and {}\n", a.run, config.model, file.string(),
             tensors.size(), bytes.size(), config_path);
  fmt::print("back into a run: zoo import {} --out RUN (the model and its options come from the file)\n",
             file.string());
}

/// Runs argv with stdout and stderr into files; its exit status as waitpid gives it (-1: it could not start).
int run_child(const std::vector<std::string>& args, const std::string& out, const std::string& err) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& s : copy) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

/// zoo export --format onnx: LibTorch cannot write ONNX, so the traced module goes to Debian's python3-torch
/// (torch.onnx.export) in a child process, whose python3-onnx checks the file and OpenCV's DNN module runs it
/// against the C++ forward (tools/cli/onnx_export.py, compiled in). The file is kept only when they agree to 1e-4.
void export_onnx(const ExportArgs& a, const std::string& model_name, torch::nn::AnyModule& model,
                 const training::Exported& exported, const torch::Tensor& example, const torch::Tensor& other_batch) {
  if (a.dynamic_batch && !exported.any_batch)
    throw std::runtime_error(model_name + "'s trace keeps the example's batch size (its C++ forward reads sizes), " +
                             "so --dynamic-batch cannot be honoured; export without it");
  const ScopedTempDir scratch("zoo-onnx");
  const auto& tmp = scratch.path();
  training::save_script_module(exported.module, (tmp / "traced.pt").string());
  std::vector<torch::Tensor> inputs{example};
  if (a.dynamic_batch) inputs.push_back(other_batch);
  c10::impl::GenericList in(c10::TensorType::get()), outs(c10::ListType::create(c10::TensorType::get()));
  for (const auto& x : inputs) {
    in.push_back(x);
    c10::impl::GenericList ys(c10::TensorType::get());
    for (const auto& y : training::forward_outputs(model, x)) ys.push_back(y.contiguous());
    outs.push_back(ys);
  }
  c10::impl::GenericDict io(c10::StringType::get(), c10::AnyType::get());
  io.insert("inputs", in);
  io.insert("outputs", outs);
  const auto io_bytes = torch::jit::pickle_save(io);
  zoo::write_bytes((tmp / "io.pt").string(), std::string(io_bytes.begin(), io_bytes.end()));
  const auto partial = a.out + ".tmp";
  const int status =
      run_child({a.python, "-c", kOnnxExportScript, (tmp / "traced.pt").string(), (tmp / "io.pt").string(), partial,
                 std::to_string(a.opset), a.dynamic_batch ? "1" : "0"},
                (tmp / "out").string(), (tmp / "err").string());
  auto last_line = [](const fs::path& file) {
    std::ifstream in(file);
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty()) last = line;
    return last;
  };
  std::error_code ec;
  if (status == -1 || (WIFEXITED(status) && WEXITSTATUS(status) == 127))
    throw std::runtime_error("cannot start " + a.python +
                             "; zoo export --format onnx needs Debian's python3 with python3-torch, python3-onnx and "
                             "python3-opencv (or --python PATH)");
  if (WIFSIGNALED(status)) {
    fs::remove(partial, ec);
    auto where = last_line(tmp / "out");
    where = where.rfind("stage: ", 0) == 0 ? where.substr(7) : "the export";
    throw std::runtime_error(
        fmt::format("{} died of signal {} ({}) in {}; this model does not export to ONNX here; "
                    "nothing written",
                    a.python, WTERMSIG(status), strsignal(WTERMSIG(status)), where));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fs::remove(partial, ec);
    const auto why = last_line(tmp / "err");
    throw std::runtime_error(why.empty() ? "the ONNX export in " + a.python + " ended without a reason (status " +
                                               std::to_string(status) + ")"
                                         : why);
  }
  json result;
  try {
    result = json::parse(last_line(tmp / "out"));
  } catch (const std::exception&) {
    fs::remove(partial, ec);
    throw std::runtime_error("the ONNX export in " + a.python + " printed no result");
  }
  const double diff = result.value("max_abs_diff", INFINITY);
  if (!(diff <= 1e-4)) {
    fs::remove(partial, ec);
    throw std::runtime_error(
        fmt::format("OpenCV's run of the ONNX model differs from the C++ forward by {:.3g} "
                    "(more than 1e-4); nothing written",
                    diff));
  }
  fs::rename(partial, a.out, ec);
  if (ec) throw std::runtime_error("cannot write " + a.out + ": " + ec.message());
  auto shape = example.sizes().vec();
  if (a.dynamic_batch) shape[0] = -1;
  fmt::print(
      "exported {} ({}) to {} (ONNX opset {}, input {}{}); checked by onnx.checker, OpenCV DNN equals the C++ "
      "forward to {:.2g}\n",
      a.run, model_name, a.out, a.opset, c10::str(c10::IntArrayRef(shape)), a.dynamic_batch ? " (any batch size)" : "",
      diff);
  fmt::print("python: net = cv2.dnn.readNetFromONNX(\"{}\"); net.setInput(x.numpy()); y = net.forward()\n", a.out);
}

}  // namespace

ScopedTempDir::ScopedTempDir(const std::string& prefix) {
  std::string pattern = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("cannot create a temporary directory in " + fs::temp_directory_path().string() + ": " +
                             std::strerror(errno));
  path_ = pattern;
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {

void run_export(ExportArgs a) {
  training::apply_threads(a.threads);
  if (a.format != "torchscript" && a.format != "safetensors" && a.format != "onnx")
    throw std::invalid_argument("--format must be torchscript, safetensors or onnx, got '" + a.format + "'");
  if (a.format != "onnx" && (a.dynamic_batch || a.opset != 13))
    throw std::invalid_argument("--opset and --dynamic-batch belong to --format onnx");
  auto [config, model] = training::load_run_model(a.run, "cpu", a.checkpoint);
  if (a.format == "safetensors") return export_safetensors(a, config, *model.ptr());
  a.out = export_path(a);
  torch::Tensor example, same_shape, other_batch;
  if (!a.example_shape.empty()) {
    auto shape = parse_shape(a.example_shape, "--example-shape");
    torch::manual_seed(0);
    example = torch::rand(shape);
    same_shape = torch::rand(shape);
    shape[0] += 1;
    other_batch = torch::rand(shape);
  } else {  // test items of the run's data: item 0 to trace, item 1 for the check, items 0-2 for another batch size
    auto data = config.data;
    data.limit = 3;
    data.val_fraction = 0;  // only test items are used: nothing held out for validation
    const auto splits = datasets::load_splits(data);
    if (splits.test->size() < 3)
      throw std::runtime_error("the run's test data has fewer than 3 items; give --example-shape");
    example = splits.test->get(torch::tensor({int64_t{0}})).input;
    same_shape = splits.test->get(torch::tensor({int64_t{1}})).input;
    other_batch = splits.test->get(torch::arange(3)).input;
  }
  auto exported = training::export_torchscript(model, example, same_shape, other_batch);
  if (a.format == "onnx") return export_onnx(a, config.model, model, exported, example, other_batch);
  // What zoo predict needs beside the code: the class names and the input item's shape (Python reads them with
  // torch.jit.load(PATH, _extra_files={"zoo.json": ""})).
  json meta{{"model", config.model}, {"classes", config.classes}, {"input_shape", config.input_shape}};
  if (!config.mean.empty()) meta.update({{"mean", config.mean}, {"std", config.std}});
  training::save_script_module(exported.module, a.out, {{"zoo.json", meta.dump()}});
  auto shape = example.sizes().vec();
  std::string input = c10::str(example.sizes());
  if (exported.any_batch) {
    shape[0] = -1;
    input = c10::str(c10::IntArrayRef(shape)) + " (any batch size)";
  } else {
    input += " (this shape only: the C++ forward reads sizes, which a trace keeps as constants)";
  }
  fmt::print("exported {} ({}) to {}; input {} {}\n", a.run, config.model, a.out, input,
             c10::toString(example.scalar_type()));
  fmt::print("python: m = torch.jit.load(\"{}\"); y = m(x)\n", a.out);
}

// ---- zoo import ------------------------------------------------------------------------------------------

struct ImportArgs {
  std::string file, model, out, dataset, data_dir, key;
  std::vector<std::string> set, data_options;
  bool partial = false;
  int64_t threads = 0;
};

void run_import(const ImportArgs& a) {
  training::apply_threads(a.threads);
  const auto weights = read_weights(a.file, a.key);
  training::RunConfig config;
  config.model = a.model;
  if (training::looks_like_safetensors(a.file)) {
    // zoo's own safetensors name the model and its options: --model may be left out, --set changes them.
    const auto metadata = training::read_safetensors(a.file).metadata;
    const auto named = metadata.find("zoo_model");
    if (named != metadata.end() && (a.model.empty() || a.model == named->second)) {
      config.model = named->second;
      if (const auto o = metadata.find("zoo_options"); o != metadata.end())
        config.options = training::parse_json(o->second, a.file + " __metadata__ zoo_options");
      if (!config.options.is_object()) config.options = json::object();
    }
  }
  if (config.model.empty())
    throw std::invalid_argument(a.file + " names no zoo model; give --model NAME (see zoo list)");
  const auto& entry = models::ModelRegistry::instance().at(config.model);
  config.data.name = a.dataset.empty() ? entry.dataset : a.dataset;
  config.data.data_dir = a.data_dir;
  for (const auto& item : a.set) {
    auto [key, value] = parse_set(item, "--set");
    config.options = models::merge_options(entry, config.options, {{key, value}});
  }
  for (const auto& item : a.data_options) {
    auto [key, value] = parse_set(item, "--data-option");
    config.data.options[key] = value;
  }
  // The model's recommended training settings, as `zoo train MODEL` takes them: fine-tuning with `zoo train
  // --resume` starts from these, not from generic defaults.
  config.train = training::train_options_from_json(entry.train_defaults).progress(false);
  // Check every name and shape before anything is written.
  auto [probe, options] = models::build_model(config.model, config.options);
  const auto problems = training::copy_tensors(*probe.ptr(), weights, /*strict=*/true);
  if (!problems.empty() && !a.partial) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 6; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 6) list += "; and " + std::to_string(problems.size() - 6) + " more";
    throw std::runtime_error(a.file + " does not match model '" + config.model + "' (" + list +
                             "); fix the options (--set) or import what matches with --partial");
  }
  auto run = training::Run::create(config, a.out);
  training::copy_tensors(*run->model().ptr(), weights, /*strict=*/false);
  run->save_checkpoint();
  for (const auto& p : problems) fmt::print("not imported: {}\n", p);
  fmt::print("imported {} tensors of {} into {} ({}); try: zoo eval {}\n", weights.size(), a.file, a.out, config.model,
             a.out);
}

// ---- zoo predict -----------------------------------------------------------------------------------------

struct PredictArgs {
  std::string file, input, shape, folder, out, precision = "32", checkpoint = "best", classes, resize;
  int64_t topk = 5, batch_size = 32, threads = 0, channels = 0;
  bool force = false, no_resize = false;
};

/// What zoo predict runs: a run's model or a TorchScript module, with the class names and the input item shape
/// they carry (a run's config.json; the zoo.json zoo export writes into a module), when they carry them.
struct Predictor {
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  std::vector<std::string> classes;
  std::vector<int64_t> input_shape;
  datasets::Normalization normalization;  ///< what the training data went through, applied to images
};

torch::Tensor first_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple() && !v.toTupleRef().elements().empty() && v.toTupleRef().elements()[0].isTensor())
    return v.toTupleRef().elements()[0].toTensor();
  throw std::runtime_error("the module's forward returns " + v.tagKind() +
                           "; zoo predict shows tensors (or the first of a tuple)");
}

Predictor open_predictor(const PredictArgs& a) {
  const auto precision = training::parse_precision(a.precision);
  Predictor p;
  if (fs::is_directory(a.file)) {
    if (!fs::exists(fs::path(a.file) / "config.json"))
      throw std::runtime_error(a.file +
                               " is a directory but not a zoo run (no config.json); give a run directory or "
                               "a TorchScript file");
    auto [config, model] = training::load_run_model(a.file, "cpu", a.checkpoint);
    if (training::reduced_weights(precision)) model.ptr()->to(training::reduced_type(precision));
    p.classes = config.classes;
    p.input_shape = config.input_shape;
    p.normalization = {config.mean, config.std};
    p.forward = [model = std::move(model)](const torch::Tensor& x) mutable {
      auto any = model.any_forward(x);
      if (auto* t = any.try_get<torch::Tensor>()) return *t;
      if (auto* t3 = any.try_get<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>>()) return std::get<0>(*t3);
      if (auto* t2 = any.try_get<std::tuple<torch::Tensor, torch::Tensor>>()) return std::get<0>(*t2);
      throw std::runtime_error("the model's forward returns no tensor zoo predict can show");
    };
  } else {
    torch::jit::ExtraFilesMap extra{{"zoo.json", ""}};
    auto module = std::make_shared<torch::jit::Module>(load_torchscript(a.file, &extra));
    module->eval();
    if (training::reduced_weights(precision)) module->to(training::reduced_type(precision));
    if (!extra["zoo.json"].empty()) {
      const auto meta = json::parse(extra["zoo.json"], nullptr, false);
      if (meta.is_object()) {
        if (meta.value("classes", json()).is_array())
          for (const auto& c : meta["classes"])
            if (c.is_string()) p.classes.push_back(c.get<std::string>());
        if (meta.value("input_shape", json()).is_array())
          for (const auto& d : meta["input_shape"])
            if (d.is_number_integer()) p.input_shape.push_back(d.get<int64_t>());
        for (const char* key : {"mean", "std"})
          if (meta.value(key, json()).is_array())
            for (const auto& v : meta[key])
              if (v.is_number())
                (key[0] == 'm' ? p.normalization.mean : p.normalization.std).push_back(v.get<double>());
        if (p.normalization.mean.size() != p.normalization.std.size()) p.normalization = {};
      }
    }
    p.forward = [module](const torch::Tensor& x) { return first_tensor(module->forward({x})); };
  }
  if (!a.classes.empty()) {
    std::ifstream in(a.classes);
    if (!in) throw std::runtime_error("cannot read --classes " + a.classes + ": " + std::strerror(errno));
    p.classes.clear();
    std::string line;
    while (std::getline(in, line)) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) p.classes.push_back(line);
    }
    if (p.classes.empty())
      throw std::runtime_error("--classes " + a.classes + " names no classes; write one class name per line");
  }
  return p;
}

std::string top_classes(const torch::Tensor& logits, int64_t k, const std::vector<std::string>& names) {
  const auto p = torch::softmax(logits.to(torch::kFloat64), -1);
  const auto top = p.topk(std::min<int64_t>(k, p.size(-1)));
  std::string out;
  for (int64_t j = 0; j < std::get<0>(top).size(0); ++j) {
    const int64_t id = std::get<1>(top)[j].item<int64_t>();
    const std::string label =
        id < static_cast<int64_t>(names.size()) ? names[static_cast<size_t>(id)] : std::to_string(id);
    out += fmt::format("{}{} ({:.4f})", j ? ", " : "", label, std::get<0>(top)[j].item<double>());
  }
  return out;
}

/// --resize N or HxW -> (height, width).
std::pair<int64_t, int64_t> parse_resize(const std::string& text) {
  const auto x = text.find('x');
  try {
    size_t used = 0;
    if (x == std::string::npos) {
      const auto n = std::stoll(text, &used);
      if (used == text.size() && n > 0 && n <= 4096) return {n, n};
    } else {
      const auto h = std::stoll(text.substr(0, x), &used);
      size_t used_w = 0;
      const auto w = std::stoll(text.substr(x + 1), &used_w);
      if (used == x && used_w == text.size() - x - 1 && h > 0 && w > 0 && h <= 4096 && w <= 4096) return {h, w};
    }
  } catch (const std::exception&) {
  }
  throw std::invalid_argument("--resize expects N or HxW (each 1..4096), e.g. 28 or 64x48, got '" + text + "'");
}

/// An image as the model takes it: [1, C, H, W] in [0, 1], in the model's channels and (unless --no-resize)
/// brought to its size as the dataset's evaluation transform does (shorter side, then centre crop).
torch::Tensor image_input(const std::string& path, const PredictArgs& a, const Predictor& p) {
  const bool image_model = p.input_shape.size() == 3;
  const int64_t channels = a.channels ? a.channels : image_model ? p.input_shape[0] : 0;
  auto image = datasets::load_image(path, static_cast<int>(channels == 1 || channels == 3 ? channels : 0));
  std::pair<int64_t, int64_t> size{0, 0};
  if (!a.resize.empty())
    size = parse_resize(a.resize);
  else if (image_model)
    size = {p.input_shape[1], p.input_shape[2]};
  if (size.first > 0 && (image.size(1) != size.first || image.size(2) != size.second)) {
    if (a.no_resize)
      throw std::invalid_argument(fmt::format(
          "{} is {}x{} but the model takes {}x{} images; leave out --no-resize to resize it (shorter side, then centre "
          "crop)",
          path, image.size(2), image.size(1), size.second, size.first));
    image = datasets::resize_center_crop(image, size.first, size.second);
  }
  auto x = datasets::pixels_to_unit(image).unsqueeze(0);
  if (p.normalization.any()) {
    if (static_cast<int64_t>(p.normalization.mean.size()) != x.size(1))
      throw std::invalid_argument(fmt::format(
          "{} was read with {} channels but the model's inputs were normalised per channel for {}; leave out "
          "--channels",
          path, x.size(1), p.normalization.mean.size()));
    x = p.normalization.apply(x);
  }
  return x;
}

void run_predict(const PredictArgs& a) {
  check_precision(a.precision, "cpu", a.force);
  training::apply_threads(a.threads);
  const int given = !a.input.empty() + !a.shape.empty() + !a.folder.empty();
  if (given != 1)
    throw std::invalid_argument("zoo predict needs exactly one of --input FILE, --shape N,C,H,W, --batch DIR");
  if (!a.resize.empty()) parse_resize(a.resize);  // a bad value before anything is loaded
  if (a.no_resize && !a.resize.empty()) throw std::invalid_argument("--resize and --no-resize exclude each other");
  auto predictor = open_predictor(a);
  torch::NoGradGuard no_grad;
  auto scope = training::autocast(training::parse_precision(a.precision), torch::kCPU);
  auto forward = [&](const torch::Tensor& x, const std::string& what) {
    try {
      return ops::float32(predictor.forward(x));
    } catch (const std::exception& e) {  // TorchScript's errors (JITException) end with the line that says why
      const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
      const std::string msg = c10_error ? c10_error->what_without_backtrace() : e.what();
      throw std::runtime_error(
          (fs::is_directory(a.file) ? "the model" : "the module") + std::string(" does not take input ") +
          c10::str(x.sizes()) + " (" + training::last_line(msg) + "); " +
          (what == "shape" ? "give a --shape that matches it" : "give --resize N (or HxW) and --channels to match it"));
    }
  };
  if (!a.folder.empty()) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(a.folder))
      if (e.is_regular_file() && datasets::is_image_file(e.path().string())) files.push_back(e.path().string());
    if (files.empty())
      throw std::runtime_error(a.folder + " holds no images (.png, .jpg, .bmp, .tga, .gif, .pgm, ...)");
    std::sort(files.begin(), files.end());
    for (size_t lo = 0; lo < files.size(); lo += static_cast<size_t>(a.batch_size)) {
      const size_t hi = std::min(files.size(), lo + static_cast<size_t>(a.batch_size));
      std::vector<torch::Tensor> images;
      for (size_t i = lo; i < hi; ++i) images.push_back(image_input(files[i], a, predictor));
      for (size_t i = lo + 1; i < hi; ++i)
        if (images[i - lo].sizes() != images[0].sizes())
          throw std::runtime_error(files[i] + " is " + c10::str(images[i - lo].sizes().slice(1)) + " but " + files[lo] +
                                   " is " + c10::str(images[0].sizes().slice(1)) +
                                   "; a batch needs images of one size: give --resize N (or HxW)");
      const auto out = forward(torch::cat(images), "image");
      for (size_t i = lo; i < hi; ++i)
        fmt::print("{}  {}\n", fs::path(files[i]).filename().string(),
                   out.dim() == 2 ? top_classes(out[static_cast<int64_t>(i - lo)], a.topk, predictor.classes)
                                  : c10::str(out.sizes().slice(1)));
    }
    return;
  }
  torch::Tensor x;
  std::string what = "image";
  if (!a.shape.empty()) {
    torch::manual_seed(0);
    x = torch::rand(parse_shape(a.shape, "--shape"));
    what = "shape";
  } else if (fs::exists(a.input) && training::describe_torch_file(a.input) == "a torch.save pickle") {
    const auto saved = training::read_torch_save(a.input);  // torch.save(x, PATH) in Python
    if (saved.top.kind.rfind("tensor", 0) != 0)
      throw std::runtime_error(a.input + " holds a " + saved.top.kind +
                               "; save the one input tensor with torch.save(x, PATH)");
    x = saved.top.tensors.front().second.contiguous();
    what = "shape";
  } else {
    x = image_input(a.input, a, predictor);
  }
  const auto out = forward(x, what);
  fmt::print("input {} -> output {}\n", c10::str(x.sizes()), c10::str(out.sizes()));
  if (out.dim() == 2)
    for (int64_t i = 0; i < out.size(0); ++i)
      fmt::print("item {}: top classes {}\n", static_cast<long long>(i),
                 top_classes(out[i], a.topk, predictor.classes));
  if (!a.out.empty()) {
    if (out.dim() != 4)
      throw std::invalid_argument("--out writes image outputs [N, C, H, W]; this output is " + c10::str(out.sizes()));
    auto image = out[0];
    if (image.size(0) == 1 || image.size(0) == 3)
      datasets::save_png(image, a.out);  // values in [0, 1] (clamped)
    else
      datasets::save_png(datasets::colorize_labels(image.argmax(0)), a.out);  // class scores: coloured labels
    fmt::print("wrote {}\n", a.out);
  }
}

}  // namespace

void add_interop(CLI::App& app) {
  {
    auto a = std::make_shared<ExportArgs>();
    auto* cmd = app.add_subcommand(
        "export", "Write a run as TorchScript (Python can torch.jit.load and call it), safetensors or ONNX");
    cmd->add_option("run", a->run, "Run directory")->required();
    add_checkpoint_option(cmd, a->checkpoint);
    cmd->add_option("--out", a->out,
                    "Output file (default beside the run directory: RUN.ts.pt, RUN.hf/model.safetensors or RUN.onnx)");
    cmd->add_flag("--force", a->force, "Replace an existing output file (never one of a run's own files)");
    cmd->add_option("--format", a->format,
                    "torchscript (a module Python can call), safetensors (weights only: RUN.hf/model.safetensors "
                    "and config.json; no code runs on load) or onnx (RUN.onnx, through Debian's python3-torch, "
                    "checked by python3-onnx and run by python3-opencv)")
        ->check(CLI::IsMember({"torchscript", "safetensors", "onnx"}));
    cmd->add_option("--opset", a->opset, "ONNX opset version with --format onnx (default 13)")
        ->check(CLI::Range(7, 17));
    cmd->add_flag("--dynamic-batch", a->dynamic_batch,
                  "With --format onnx: a free batch axis (checked on a second batch size; refused for models whose "
                  "trace keeps the batch size)");
    cmd->add_option("--python", a->python,
                    "Python with torch, onnx and cv2 for --format onnx (default /usr/bin/python3)");
    cmd->add_option("--example-shape", a->example_shape,
                    "Example input to trace with, e.g. 1,1,28,28 (default: two test items of the run's data)");
    cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
    cmd->callback([a] { run_export(*a); });
  }
  {
    auto a = std::make_shared<ImportArgs>();
    auto* cmd = app.add_subcommand("import", "Weights of a TorchScript module or torch.save state_dict -> a zoo run");
    cmd->add_option("file", a->file, "safetensors file, TorchScript module (torch.jit.save) or state_dict (torch.save)")
        ->required();
    cmd->add_option("--model", a->model,
                    "zoo model to import into (see zoo list); a safetensors file exported by zoo names its own");
    cmd->add_option("--out", a->out, "Run directory to write")->required();
    cmd->add_option("--set", a->set, "Model option key=value, repeatable (as for zoo train)");
    cmd->add_option("--dataset", a->dataset, "Dataset of the run (default: the model's)");
    cmd->add_option("--data-dir", a->data_dir, "Data directory or file(s)");
    cmd->add_option("--data-option", a->data_options, "Dataset option key=value, repeatable");
    cmd->add_option("--key", a->key,
                    "The entry of a torch.save checkpoint dict that holds the state_dict, e.g. model (default: the "
                    "file itself, or its one state_dict entry)");
    cmd->add_flag("--partial", a->partial, "Import the tensors that match and list the others, instead of refusing");
    cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
    cmd->callback([a] { run_import(*a); });
  }
  {
    auto a = std::make_shared<PredictArgs>();
    auto* cmd = app.add_subcommand("predict",
                                   "Run a run's model or any TorchScript module on an image, a folder of images or "
                                   "random input");
    cmd->add_option("file", a->file, "Run directory, or TorchScript module (torch.jit.save in Python, or zoo export)")
        ->required();
    add_checkpoint_option(cmd, a->checkpoint);
    cmd->add_option("--input", a->input,
                    "An image (PNG, JPEG, ...), as [1, C, H, W] in [0, 1], or a tensor saved with torch.save(x, PATH)");
    cmd->add_option("--shape", a->shape, "Random input of this shape instead, e.g. 1,1,28,28");
    cmd->add_option("--batch", a->folder, "A folder of images: predicts them all, --batch-size at a time");
    cmd->add_option("--batch-size", a->batch_size, "Images per forward with --batch (default 32)")
        ->check(CLI::Range(1, 100000));
    cmd->add_option("--channels", a->channels,
                    "Read images with 1 (grey) or 3 (RGB) channels (default: the model's where the run or export "
                    "records it, else as stored)")
        ->check(CLI::IsMember({0, 1, 3}));
    cmd->add_option("--resize", a->resize,
                    "Bring images to N x N or H x W (e.g. 28 or 64x48): shorter side, then centre crop, as the "
                    "evaluation transform (default: the size the run or export records)");
    cmd->add_flag("--no-resize", a->no_resize,
                  "Refuse an image of another size than the model's instead of resizing it");
    cmd->add_option("--classes", a->classes,
                    "Class names, one per line, printed instead of ids (default: the names the run or export records)");
    cmd->add_option("--topk", a->topk, "Classes to print for a classifier (default 5)")->check(CLI::Range(1, 1000));
    cmd->add_option("--out", a->out, "Write an image output [N, C, H, W] as PNG (class scores as coloured labels)");
    cmd->add_option("--threads", a->threads, threads_help)->check(non_negative());
    add_precision_options(cmd, a->precision, a->force, "32");
    cmd->callback([a] { run_predict(*a); });
  }
}

}  // namespace zoo::cli
