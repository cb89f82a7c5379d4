// Progress of an epoch: durations as people read them, plain lines at quarters, a bar redrawn in place.
#include "training/progress.h"
#include "helpers.h"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

using zoo::training::format_duration;
using zoo::training::Progress;

namespace {

/// What `f` writes to stderr.
std::string capture_stderr(const std::function<void()>& f) {
  zoo::test::TempDir dir;
  const auto path = (dir.path() / "stderr.txt").string();
  std::fflush(stderr);
  const int saved = dup(fileno(stderr));
  FILE* file = std::fopen(path.c_str(), "w");
  REQUIRE(file != nullptr);
  dup2(fileno(file), fileno(stderr));
  f();
  std::fflush(stderr);
  dup2(saved, fileno(stderr));
  close(saved);
  std::fclose(file);
  return zoo::test::read_text(path);
}

}  // namespace

TEST_CASE("Progress: durations in seconds, minutes and hours, and ? for what is not a duration", "[training]") {
  CHECK(format_duration(0) == "0.0s");
  CHECK(format_duration(12.34) == "12.3s");
  CHECK(format_duration(65) == "1m05s");
  CHECK(format_duration(3599) == "59m59s");
  CHECK(format_duration(3600 + 125) == "1h02m");
  CHECK(format_duration(-1) == "?");
  CHECK(format_duration(NAN) == "?");
  CHECK(format_duration(INFINITY) == "?");
}

TEST_CASE("Progress: plain lines at each quarter of the epoch, a bar with its final time on a terminal, or nothing",
          "[training]") {
  const auto lines = capture_stderr([] {
    Progress p("epoch 1/2", 8, /*interactive=*/false);
    for (int64_t step = 1; step <= 8; ++step) p.update(step, step * 32, 1.0 / static_cast<double>(step));
    p.finish();
  });
  // Steps 2, 4 and 6 of 8 (the last step is the epoch's own summary line, printed by the caller).
  CHECK(zoo::test::count_lines(lines) == 3);
  CHECK(lines.find("epoch 1/2 step 2/8 loss 0.5000 ") != std::string::npos);
  CHECK(lines.find("epoch 1/2 step 4/8 loss 0.2500 ") != std::string::npos);
  CHECK(lines.find("epoch 1/2 step 6/8 loss 0.1667 ") != std::string::npos);
  CHECK(lines.find("step 8/8") == std::string::npos);
  CHECK(lines.find("items/s ETA ") != std::string::npos);

  const auto bar = capture_stderr([] {
    Progress p("train", 4, /*interactive=*/true);
    for (int64_t step = 1; step <= 4; ++step) p.update(step, step * 10, 0.5);
    p.finish();
  });
  // Redrawn at most ~10 times a second: the quick steps 1-3 are skipped, the last step is drawn with an ETA and
  // finish() draws it again with the time taken.
  CHECK(std::count(bar.begin(), bar.end(), '\r') == 2);
  CHECK(bar.find("\rtrain [########################] 4/4 loss 0.5000 ") == 0);
  CHECK(bar.find(" items/s in ") != std::string::npos);
  CHECK(bar.back() == '\n');

  const auto quiet = capture_stderr([] {
    Progress p("train", 4, /*interactive=*/true, /*enabled=*/false);
    p.update(4, 40, 0.5);
    p.finish();
  });
  CHECK(quiet.empty());
}
