#define CATCH_CONFIG_MAIN
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>

// Every test case starts from the same random state, as PyTorch's own test suite seeds each test in setUp:
// LibTorch seeds its default generator from /dev/urandom, so a test that draws without torch::manual_seed would
// otherwise see new numbers in every process. ZOO_TEST_SEED=<n> runs the suite from another seed, to find tests
// that hold for one draw only (docs/testing.md).
namespace {
uint64_t test_seed() {
  const char* text = std::getenv("ZOO_TEST_SEED");
  if (text == nullptr || *text == '\0') return 0;
  char* end = nullptr;
  const uint64_t seed = std::strtoull(text, &end, 10);
  if (*text < '0' || *text > '9' || *end != '\0') {
    std::fprintf(stderr, "ZOO_TEST_SEED must be a non-negative integer, got '%s'\n", text);
    std::exit(2);
  }
  return seed;
}

struct SeedEachTestCase : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo&) override { torch::manual_seed(seed); }
  uint64_t seed = test_seed();
};
}  // namespace
CATCH_REGISTER_LISTENER(SeedEachTestCase)
