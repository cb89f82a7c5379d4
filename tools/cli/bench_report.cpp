// zoo bench: the report (JSON rows, the Markdown tables, the README block) and the machine's calibration.
#include "tools/cli/bench.h"

#include "core/files.h"
#include "tools/cli/verdict.h"
#include "training/threads.h"

#include <fmt/format.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace zoo::cli::bench {

namespace fs = std::filesystem;

Calibration calibrate(int64_t threads, const Rule& rule) {
  training::apply_threads(threads);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  Calibration c;
  c.threads = threads;
  const auto x = torch::randn({32, 64, 32, 32}), w = torch::randn({64, 64, 3, 3});
  const double conv_flops = 2.0 * 32 * 64 * 32 * 32 * 64 * 9;
  c.conv_gflops = conv_flops / measure([&] { torch::conv2d(x, w, {}, 1, 1); }, rule) / 1e9;
  const auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  c.matmul_gflops = 2.0 * 1024 * 1024 * 1024 / measure([&] { torch::mm(a, b); }, rule) / 1e9;
  return c;
}

std::string machine_description() {
  std::string cpu = "unknown CPU";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  return fmt::format("{}, {} cores", cpu, std::thread::hardware_concurrency());
}

namespace {
/// Milliseconds with three significant digits.
std::string ms(double seconds) {
  const double m = seconds * 1e3;
  return fmt::format("{:.{}f}", m, m >= 100 ? 0 : m >= 10 ? 1 : m >= 1 ? 2 : 3);
}
}  // namespace

json result_json(const Result& r, bool python) {
  const auto& spec = r.runner->spec;
  const double batch = static_cast<double>(r.runner->batch);
  auto samples = [](const std::vector<double>& v) {
    json a = json::array();
    for (double x : v) a.push_back(x * 1e3);
    return a;
  };
  auto side = [&](const Figures& f) {
    const double t = median(f.train), i = median(f.infer), l = median(f.latency);
    return json{
        {"train_ms", t * 1e3},
        {"infer_ms", i * 1e3},
        {"latency_ms", l * 1e3},
        {"train_items_per_s", batch / t},
        {"infer_items_per_s", batch / i},
        {"samples_ms", {{"train", samples(f.train)}, {"infer", samples(f.infer)}, {"latency", samples(f.latency)}}}};
  };
  // Speedup: the median over rounds of Python time / C++ time of the same round (paired_ratios).
  json j = {{"case", spec.name},
            {"model", spec.model},
            {"description", spec.what},
            {"batch", r.runner->batch},
            {"threads", r.threads},
            {"target_speedup", spec.overhead_bound ? 1.3 : 1.0},
            {"precision", training::precision_name(r.runner->precision)},
            {"cpp", side(r.cpp)}};
  if (python) {
    j["python"] = side(r.python);
    const auto train = paired_ratios(r.python.train, r.cpp.train), infer = paired_ratios(r.python.infer, r.cpp.infer),
               latency = paired_ratios(r.python.latency, r.cpp.latency);
    j["speedup"] = {{"train", median(train)}, {"infer", median(infer)}, {"latency", median(latency)}};
    j["speedup_rounds"] = {{"train", train}, {"infer", infer}, {"latency", latency}};
    const double target = spec.overhead_bound ? 1.3 : 1.0;
    j["meets_target"] = std::min({median(train), median(infer), median(latency)}) >= target;
    j["verdict"] = speedup_verdict({train, infer, latency}, target);
  }
  if (!r.load.empty()) {
    const double load = median(r.load);
    j["data"] = {{"dataset", r.runner->dataset},
                 {"batch_ms", load * 1e3},
                 {"items_per_s", batch / load},
                 {"fraction_of_step", load / median(r.cpp.train)}};
  }
  if (r.runner->forward_flops > 0) {
    const double f = r.runner->forward_flops;
    j["gflop_per_batch"] = f / 1e9;
    j["gflops"] = {{"train", 3 * f / median(r.cpp.train) / 1e9}, {"infer", f / median(r.cpp.infer) / 1e9}};
  }
  return j;
}

namespace {
/// A row's case, with its precision when it is not float32: "cnn", "cnn (bf16-mixed)".
std::string label(const json& r) {
  const auto p = r.value("precision", std::string("32"));
  return r["case"].get<std::string>() + (p == "32" ? "" : " (" + p + ")");
}

/// bf16-mixed against float32 for each case and thread count measured in both (add_speedups_over_32).
void precision_table(std::ostringstream& s, const json& doc, bool python) {
  s << "\nbf16-mixed against float32 (time in 32 / time in bf16-mixed, the median over rounds of the two measured "
       "back to back; above 1: bf16-mixed is faster):\n\n| case | threads | train C++ | infer C++ |"
    << (python ? " train Python | infer Python |\n|---|---|---|---|---|---|\n" : "\n|---|---|---|---|\n");
  for (const auto& b : doc["results"]) {
    if (!b.contains("over_32")) continue;
    const auto ratio = [&](const char* side, const char* what) {
      return fmt::format("{:.2f}x", b["over_32"][side][what].get<double>());
    };
    s << "| " << b["case"].get<std::string>() << " | " << b["threads"].get<int64_t>() << " | " << ratio("cpp", "train")
      << " | " << ratio("cpp", "infer") << " |";
    if (python) s << " " << ratio("python", "train") << " | " << ratio("python", "infer") << " |";
    s << "\n";
  }
}
}  // namespace

void add_speedups_over_32(json& results) {
  for (auto& b : results) {
    if (b.value("precision", std::string("32")) != "bf16-mixed") continue;
    for (const auto& a : results) {
      if (a.value("precision", std::string("32")) != "32" || a["case"] != b["case"] || a["threads"] != b["threads"])
        continue;
      json over = json::object(), rounds = json::object();
      for (const char* side : {"cpp", "python"}) {
        if (!a.contains(side) || !b.contains(side)) continue;
        for (const char* what : {"train", "infer", "latency"}) {
          const auto r = paired_ratios(a[side]["samples_ms"][what].get<std::vector<double>>(),
                                       b[side]["samples_ms"][what].get<std::vector<double>>());
          over[side][what] = median(r);
          rounds[side][what] = r;
        }
      }
      b["over_32"] = over;
      b["over_32_rounds"] = rounds;
    }
  }
}

std::string markdown(const json& doc) {
  std::ostringstream s;
  const bool python = doc["settings"]["python"].get<bool>();
  const auto& allocator = doc["allocator"];
  s << "Measured by `" << doc["command"].get<std::string>() << "` on " << doc["machine"].get<std::string>() << ", "
    << doc["date"].get<std::string>() << "; LibTorch " << doc["torch"].get<std::string>() << " in C++ ("
    << allocator["cpp"].get<std::string>()
    << (doc.value("blas", std::string()).empty() ? "" : "; " + doc["blas"].get<std::string>()) << ")"
    << (python ? " and, for the Python twins, Debian's python3-torch (the same build; " +
                     allocator["python"].get<std::string>() + ")"
               : "")
    << ". Medians of " << doc["settings"]["repeat"].get<int64_t>() << " interleaved rounds; times per step in ms"
    << (python ? "; speedup = Python time / C++ time, the median over rounds of the two measured back to back "
                 "(above 1: C++ is faster)"
               : "")
    << ".\n\n";
  s << "Machine throughput: ";
  for (const auto& c : doc["calibration"])
    s << c["threads"].get<int64_t>() << " thread" << (c["threads"].get<int64_t>() > 1 ? "s" : "") << ": conv "
      << fmt::format("{:.1f}", c["conv_gflops"].get<double>()) << " GFLOP/s, matmul "
      << fmt::format("{:.1f}", c["matmul_gflops"].get<double>()) << " GFLOP/s; ";
  s << "(3x3 convolution 64->64 on 32x64x32x32, 1024^3 matmul).\n\n";
  if (python)
    s << "| case | threads | batch | train C++ | train Python | speedup | infer C++ | infer Python | speedup | "
         "latency C++ | latency Python | speedup | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  else
    s << "| case | threads | batch | train C++ | infer C++ | latency C++ |\n|---|---|---|---|---|---|\n";
  for (const auto& r : doc["results"]) {
    s << "| " << label(r) << " | " << r["threads"].get<int64_t>() << " | " << r["batch"].get<int64_t>() << " | "
      << ms(r["cpp"]["train_ms"].get<double>() / 1e3);
    if (python)
      s << " | " << ms(r["python"]["train_ms"].get<double>() / 1e3) << " | "
        << fmt::format("{:.2f}x", r["speedup"]["train"].get<double>());
    s << " | " << ms(r["cpp"]["infer_ms"].get<double>() / 1e3);
    if (python)
      s << " | " << ms(r["python"]["infer_ms"].get<double>() / 1e3) << " | "
        << fmt::format("{:.2f}x", r["speedup"]["infer"].get<double>());
    s << " | " << ms(r["cpp"]["latency_ms"].get<double>() / 1e3);
    if (python)
      s << " | " << ms(r["python"]["latency_ms"].get<double>() / 1e3) << " | "
        << fmt::format("{:.2f}x", r["speedup"]["latency"].get<double>()) << " | "
        << fmt::format("{:.1f}x", r["target_speedup"].get<double>()) << " "
        << (r["verdict"] == "met"      ? "met"
            : r["verdict"] == "parity" ? "parity"
                                       : "**missed**");
    s << " |\n";
  }
  if (python) {
    std::string misses, parity;
    int64_t rows = 0, met = 0;
    for (const auto& r : doc["results"]) {
      ++rows;
      if (r["verdict"] == "met") {
        ++met;
        continue;
      }
      auto& list = r["verdict"] == "parity" ? parity : misses;
      for (const char* what : {"train", "infer", "latency"}) {
        if (r["speedup"][what].get<double>() >= r["target_speedup"].get<double>()) continue;
        const auto v = r["speedup_rounds"][what].get<std::vector<double>>();
        list += std::string(list.empty() ? "" : "; ") + label(r) + " at " +
                std::to_string(r["threads"].get<int64_t>()) + " thread" + (r["threads"].get<int64_t>() > 1 ? "s" : "") +
                ", " + what + " " + fmt::format("{:.2f}x", r["speedup"][what].get<double>()) + " (rounds " +
                fmt::format("{:.2f}", *std::min_element(v.begin(), v.end())) + "-" +
                fmt::format("{:.2f}", *std::max_element(v.begin(), v.end())) + "x, target " +
                fmt::format("{:.1f}x", r["target_speedup"].get<double>()) + ")";
      }
    }
    s << "\nTargets met in " << met << " of " << rows << " rows";
    if (!parity.empty())
      s << "; at parity (median below 1.0x, but C++ faster in some of the " << doc["settings"]["repeat"].get<int64_t>()
        << " rounds: not slower beyond the spread of the rounds): " << parity;
    s << (misses.empty() ? "." : "; below target: " + misses + ".") << "\n";
  }
  const auto precisions = doc["settings"].value("precisions", json::array({"32"}));
  if (std::find(precisions.begin(), precisions.end(), "bf16-mixed") != precisions.end() &&
      std::find(precisions.begin(), precisions.end(), "32") != precisions.end())
    precision_table(s, doc, python);
  s << "\nData loading (one batch of the model's dataset, `Dataset::get`, as the trainer does) and achieved "
       "GFLOP/s (FLOPs of convolutions and matrix products counted from a trace of the forward; a training step "
       "counted as 3 forwards):\n\n| case | threads | dataset | batch load ms | items/s | share of a training step "
       "| GFLOP per batch | train GFLOP/s | infer GFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : doc["results"]) {
    if (!r.contains("data") && !r.contains("gflops")) continue;
    s << "| " << label(r) << " | " << r["threads"].get<int64_t>() << " | ";
    if (r.contains("data"))
      s << r["data"]["dataset"].get<std::string>() << " | " << ms(r["data"]["batch_ms"].get<double>() / 1e3) << " | "
        << fmt::format("{:.0f}", r["data"]["items_per_s"].get<double>()) << " | "
        << fmt::format("{:.2f}%", 100 * r["data"]["fraction_of_step"].get<double>()) << " | ";
    else
      s << "- | - | - | - | ";
    if (r.contains("gflops"))
      s << fmt::format("{:.3f}", r["gflop_per_batch"].get<double>()) << " | "
        << fmt::format("{:.1f}", r["gflops"]["train"].get<double>()) << " | "
        << fmt::format("{:.1f}", r["gflops"]["infer"].get<double>()) << " |\n";
    else
      s << "- | - | - |\n";
  }
  return s.str();
}

void replace_readme_block(const std::string& path, const std::string& table) {
  const std::string begin = "<!-- zoo bench: begin -->", end = "<!-- zoo bench: end -->";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path + "; give the README to update with --readme");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  // The markers count only as lines of their own (the README also mentions them in running text).
  auto line_at = [&](const std::string& marker, size_t from) {
    for (size_t at = text.find(marker, from); at != std::string::npos; at = text.find(marker, at + 1))
      if ((at == 0 || text[at - 1] == '\n') && (at + marker.size() == text.size() || text[at + marker.size()] == '\n'))
        return at;
    return std::string::npos;
  };
  const auto b = line_at(begin, 0);
  const auto e = b == std::string::npos ? std::string::npos : line_at(end, b);
  if (b == std::string::npos || e == std::string::npos)
    throw std::runtime_error(path + " has no '" + begin + "' ... '" + end +
                             "' block for the results (each marker "
                             "on a line of its own); add one");
  text = text.substr(0, b + begin.size()) + "\n" + table + text.substr(e);
  write_text_atomically(path, text);
}

}  // namespace zoo::cli::bench
