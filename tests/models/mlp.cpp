// The MLP: shapes and the Python twin's parameter names.
#include "models/mlp.h"
#include "helpers.h"
#include "models/cnn.h"
#include "models/registry.h"

#include <catch2/catch.hpp>

using namespace zoo::models;
using zoo::test::parameter_names;

TEST_CASE("MLP: logits shape and the Python twin's parameter names", "[models]") {
  MLP mlp(MLPOptions().hidden({32, 16}).num_classes(7));
  auto y = mlp->forward(torch::rand({5, 1, 28, 28}));
  CHECK(y.sizes() == torch::IntArrayRef({5, 7}));
  CHECK(parameter_names(*mlp) == std::vector<std::string>{"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                                                          "net.4.weight", "net.4.bias"});
  CHECK(count_parameters(*mlp) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 7 + 7);
  std::ostringstream s;
  mlp->pretty_print(s);
  CHECK(s.str() == "zoo::MLP(in_features=784, hidden=[32, 16], num_classes=7, dropout=0)");
  CHECK_THROWS(mlp->forward(torch::rand({5, 100})));
}
