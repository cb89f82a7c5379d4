// Stopping a running loop from a signal handler: the trainer checks after every step, saves a checkpoint (also
// in the middle of an epoch, exactly resumable) and throws Interrupted.
#pragma once

#include <stdexcept>
#include <string>

namespace zoo::training {

/// Asks a running Trainer to stop after its current step. Async-signal-safe (an atomic store), for SIGINT/SIGTERM
/// handlers; `signal` is reported back through Interrupted::signal.
void request_stop(int signal = 0);
bool stop_requested();
void clear_stop_request();
/// The signal given to request_stop (0 when none was).
int stop_signal();

/// Marks the time a loop that answers request_stop runs (Trainer::fit holds one): outside it nothing would look
/// at a request, so a signal handler should end the process at once instead (stop_answered()).
class StopAnswered {
 public:
  StopAnswered();
  ~StopAnswered();
  StopAnswered(const StopAnswered&) = delete;
  StopAnswered& operator=(const StopAnswered&) = delete;
};
/// Whether a StopAnswered is alive. Async-signal-safe (an atomic load).
bool stop_answered();

/// Thrown by Trainer::fit after a requested stop; the checkpoint (if the trainer has a run directory) is written.
class Interrupted : public std::runtime_error {
 public:
  Interrupted(const std::string& what, int signal) : std::runtime_error(what), signal(signal) {}
  int signal;
};

}  // namespace zoo::training
