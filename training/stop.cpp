#include "training/stop.h"

#include <algorithm>
#include <atomic>

namespace zoo::training {
namespace {
std::atomic<int> requested{-1};
std::atomic<int> answering{0};
}  // namespace

StopAnswered::StopAnswered() { ++answering; }
StopAnswered::~StopAnswered() { --answering; }
bool stop_answered() { return answering.load() > 0; }

void request_stop(int signal) { requested.store(signal); }
bool stop_requested() { return requested.load(std::memory_order_relaxed) >= 0; }
void clear_stop_request() { requested.store(-1); }
int stop_signal() { return std::max(0, requested.load()); }

}  // namespace zoo::training
