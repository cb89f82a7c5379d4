// core/registry.h: one table per entry type.
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

namespace {
struct Thing {
  static constexpr const char* registry_kind = "thing";
  static constexpr const char* registry_hint = " (see 'things')";
  std::string name;
  int value = 0;
};
}  // namespace

TEST_CASE("Registry: one table per entry type, names sorted, unknown and duplicate names refused", "[core][registry]") {
  auto& things = Registry<Thing>::instance();
  things.add({"b", 2});
  things.add({"a", 1});
  CHECK(&things == &Registry<Thing>::instance());
  CHECK(things.names() == std::vector<std::string>{"a", "b"});
  CHECK(things.at("b").value == 2);
  CHECK_THROWS_WITH(things.at("c"), "unknown thing 'c'; valid things: a, b (see 'things')");
  CHECK_THROWS_WITH(things.add({"a", 3}), "thing 'a' is registered twice");
  CHECK(things.at("a").value == 1);
  // The library's registries are instances of it.
  CHECK_THROWS_WITH(models::ModelRegistry::instance().at("nope"),
                    Catch::StartsWith("unknown model 'nope'; valid models: "));
  CHECK_THROWS_WITH(datasets::DatasetRegistry::instance().at("nope"), Catch::StartsWith("unknown dataset 'nope'"));
  CHECK_THROWS_WITH(training::make_objective("nope"), Catch::StartsWith("unknown task 'nope'; valid tasks: "));
}
