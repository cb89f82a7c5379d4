#include "training/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>

namespace zoo::training {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int whole = static_cast<int>(s);
  if (s < 60) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", whole / 60, whole % 60);
  return fmt::format("{}h{:02}m", whole / 3600, (whole % 3600) / 60);
}

bool Progress::stderr_is_terminal() { return isatty(fileno(stderr)) != 0; }

Progress::Progress(std::string label, int64_t total_steps, bool interactive, bool enabled)
    : label_(std::move(label)),
      total_(std::max<int64_t>(1, total_steps)),
      interactive_(interactive),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  next_line_step_ = std::max<int64_t>(1, total_ / 4);
}

void Progress::update(int64_t step, int64_t items, double loss) {
  last_step_ = step;
  last_items_ = items;
  last_loss_ = loss;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (interactive_) {
    if (now - last_draw_ < std::chrono::milliseconds(100) && step < total_) return;  // ~10 redraws a second
    last_draw_ = now;
    draw(step, items, loss, false);
  } else if (step >= next_line_step_ && step < total_) {
    next_line_step_ += std::max<int64_t>(1, total_ / 4);
    draw(step, items, loss, false);
  }
}

void Progress::finish() {
  if (!enabled_) return;
  if (interactive_) {
    draw(last_step_, last_items_, last_loss_, true);
    std::fputc('\n', stderr);
  }
  std::fflush(stderr);
}

void Progress::draw(int64_t step, int64_t items, double loss, bool final) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(items) / elapsed : 0.0;
  const double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : NAN;
  if (interactive_) {
    constexpr int width = 24;
    const int filled = static_cast<int>(width * step / total_);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    fmt::print(stderr, "\r{} [{}] {}/{} loss {:.4f} {:.0f} items/s {} {}\033[K", label_, bar,
               static_cast<long long>(step), static_cast<long long>(total_), loss, rate, final ? "in" : "ETA",
               format_duration(final ? elapsed : eta));
  } else {
    fmt::print(stderr, "{} step {}/{} loss {:.4f} {:.0f} items/s ETA {}\n", label_, static_cast<long long>(step),
               static_cast<long long>(total_), loss, rate, format_duration(eta));
  }
  std::fflush(stderr);
}

}  // namespace zoo::training
