#include "inlierq/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace inlierq {
namespace {

std::atomic<int> g_signal{0};

void on_signal(int signo) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, signo)) {
    // The second signal: the default action, now (the exit status says which signal).
    std::signal(signo, SIG_DFL);
    std::raise(signo);
    return;
  }
  static const char msg[] = "\ninterrupted: stopping at the next safe point (send the signal again to stop now)\n";
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
}

}  // namespace

const char* Interrupted::signal_name(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

void install_interrupt_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, which is reported like a full disk,
  // instead of the default SIGXFSZ killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
}

int interrupt_signal() { return g_signal.load(std::memory_order_relaxed); }

void throw_if_interrupted() {
  if (const int s = interrupt_signal()) throw Interrupted(s);
}

void set_interrupt_signal(int signal) { g_signal.store(signal); }

}  // namespace inlierq
