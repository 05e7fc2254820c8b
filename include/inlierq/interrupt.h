#pragma once
// Ctrl-C (SIGINT) and SIGTERM. The first one asks long work to stop at its next safe point (between two
// reconstruction iterations, between two images), which throws Interrupted; a second one ends the
// process at once. Nothing half-written is left either way: outputs and checkpoints are written
// atomically, so an interrupted reconstruction keeps the checkpoint of its last finished unit.
#include <string>

#include "inlierq/error.h"

namespace inlierq {

class Interrupted : public Error {
 public:
  explicit Interrupted(int signal) : Error(std::string("interrupted by ") + signal_name(signal)), signal_(signal) {}
  // outputs_written: the job had already written its outputs (the message says which).
  Interrupted(int signal, const std::string& message, bool outputs_written = false)
      : Error(message), signal_(signal), outputs_written_(outputs_written) {}
  int signal() const { return signal_; }
  bool outputs_written() const { return outputs_written_; }
  static const char* signal_name(int signal);

 private:
  int signal_;
  bool outputs_written_ = false;
};

// Installs the SIGINT and SIGTERM handlers (the CLI does, at start).
void install_interrupt_handlers();
// 0, or the first signal received since install_interrupt_handlers.
int interrupt_signal();
// Throws Interrupted when a signal was received.
void throw_if_interrupted();
// For tests and embedders: behave as if `signal` had been received (0 clears).
void set_interrupt_signal(int signal);

}  // namespace inlierq
