#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/run.h"
#include "tools/cli/cli.h"

#include <cstdio>
#include <filesystem>

namespace zoo::cli {

using nlohmann::json;

void add_eval(CLI::App& app) {
  struct Args {
    std::string run, data_dir, device;
    int64_t limit = 0, threads = 0, batch_size = 0;
    bool json_out = false;
    std::vector<std::string> set;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a run's model on the test split");
  cmd->add_option("run", a->run, "Run directory")->required();
  cmd->add_flag("--json", a->json_out, "Print the metrics as one JSON object on the last line");
  cmd->add_option("--data-dir", a->data_dir, "Data directory (default: the run's)");
  cmd->add_option("--limit", a->limit, "First N test items (default: the run's; 0 = all)")->check(non_negative());
  cmd->add_option("--batch-size", a->batch_size, "Evaluation batch size")->check(positive());
  cmd->add_option("--threads", a->threads, "Intra-op threads (default 0 = all cores)")->check(non_negative());
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default: the run's)");
  cmd->add_option("--set", a->set,
                  "Model option key=value for this evaluation only, e.g. --set method=dopri5 (options that change "
                  "parameter shapes do not match the saved weights)");
  cmd->callback([a, cmd] {
    auto run = training::Run::open(a->run, [&](training::RunConfig& c) {
      if (cmd->count("--data-dir")) c.data.data_dir = a->data_dir;
      if (cmd->count("--limit")) c.data.limit = a->limit;
      if (cmd->count("--batch-size")) c.train.eval_batch_size(a->batch_size);
      if (cmd->count("--device")) c.train.device(a->device);
      c.train.threads(a->threads);
      for (const auto& item : a->set) {
        auto [key, value] = parse_set(item);
        c.options[key] = value;
      }
      if (!a->set.empty()) c.options = models::ModelRegistry::instance().at(c.model).complete_options(c.options);
    });
    const json metrics = run->evaluate(/*thorough=*/true);
    if (a->json_out) {
      std::printf("%s\n", metrics.dump().c_str());
    } else {
      std::printf("%s on %s test: %s\n", run->config().model.c_str(), run->config().data.name.c_str(),
                  format_metrics(metrics).c_str());
    }
  });
}

void add_info(CLI::App& app) {
  struct Args {
    std::string run;
    bool json_out = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("info", "Show a run's configuration, parameter count and metrics");
  cmd->add_option("run", a->run, "Run directory")->required();
  cmd->add_flag("--json", a->json_out, "Print everything as one JSON object");
  cmd->callback([a] {
    namespace fs = std::filesystem;
    auto config = training::complete_config(training::read_run_config(a->run));
    auto [model, options] = models::build_model(config.model, config.options);
    json out = {{"run", a->run}, {"config", training::to_json(config)},
                {"parameters", models::count_parameters(*model.ptr())}};
    const auto state_path = training::checkpoint_file(a->run, "state.json");
    json state;
    if (fs::exists(state_path)) {
      state = training::read_json_file(state_path);
      out["epoch"] = state.value("epoch", 0);
      out["step"] = state.value("step", 0);
      out["best"] = {{"metric", state.value("best_metric", std::string())},
                     {"value", state.value("best", json(nullptr))},
                     {"epoch", state.value("best_epoch", 0)}};
      out["last"] = state.value("last", json::object());
    }
    if (a->json_out) {
      std::printf("%s\n", out.dump().c_str());
      return;
    }
    std::ostringstream model_text;
    model.ptr()->pretty_print(model_text);
    std::printf("run         %s\nmodel       %s\nmodule      %s\nparameters  %lld\ndataset     %s (limit %lld)\n",
                a->run.c_str(), config.model.c_str(), model_text.str().c_str(),
                static_cast<long long>(out["parameters"].get<int64_t>()), config.data.name.c_str(),
                static_cast<long long>(config.data.limit));
    std::printf("options     %s\ntrain       %s\nversions    %s\n", config.options.dump().c_str(),
                training::to_json(config.train).dump().c_str(), config.versions.dump().c_str());
    if (state.is_null()) {
      std::printf("progress    no checkpoint yet\n");
      return;
    }
    std::printf("progress    epoch %lld of %lld, step %lld\n", static_cast<long long>(out["epoch"].get<int64_t>()),
                static_cast<long long>(config.train.epochs()), static_cast<long long>(out["step"].get<int64_t>()));
    if (!out["best"]["value"].is_null())
      std::printf("best        %s %.4f at epoch %lld\n", out["best"]["metric"].get<std::string>().c_str(),
                  out["best"]["value"].get<double>(), static_cast<long long>(out["best"]["epoch"].get<int64_t>()));
    if (out["last"].contains("test")) std::printf("last test   %s\n", format_metrics(out["last"]["test"]).c_str());
    if (out["last"].contains("train")) std::printf("last train  %s\n", format_metrics(out["last"]["train"]).c_str());
  });
}

}  // namespace zoo::cli
