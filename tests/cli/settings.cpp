// The command line's reading of settings: flag text parsed by the setting's type.
#include "helpers.h"

#include "core/registry.h"
#include "core/schema.h"
#include "models/mlp.h"
#include "models/registry.h"
#include "tools/cli/settings.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <catch2/catch.hpp>

#include <limits>

using namespace zoo;
using zoo::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

TEST_CASE("Command line: flag text is parsed by the setting's type, exactly", "[core][cli]") {
  std::string problem;
  CHECK(cli::parse_setting_text("42", json(1), problem) == 42);
  CHECK(problem.empty());
  cli::parse_setting_text("9223372036854775808", json(1), problem);
  CHECK_THAT(problem, Catch::Contains("must be an integer from"));
  problem.clear();
  cli::parse_setting_text("2.5", json(1), problem);
  CHECK(problem == "must be an integer, got '2.5'");
  problem.clear();
  CHECK(cli::parse_setting_text("2.5e-3", json(0.1), problem) == 2.5e-3);
  CHECK(problem.empty());
  cli::parse_setting_text("fast", json(0.1), problem);
  CHECK(problem == "must be a number, got 'fast'");
  problem.clear();
  CHECK(cli::parse_setting_text("[1,2]", json::array(), problem) == json{1, 2});
  CHECK(cli::parse_setting_text("adam", json("x"), problem) == "adam");
}
