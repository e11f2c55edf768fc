#include "trainer_protocol/event_writer.h"

#include <cerrno>
#include <chrono>
#include <csignal>

namespace tern::trainer {

void EventWriter::Emit(const std::string& event, nlohmann::json fields) {
  if (!fields.is_object()) fields = nlohmann::json::object();
  fields["event"] = event;
  fields["job"] = job_;
  fields["rank"] = rank_;
  fields["world_size"] = world_size_;
  fields["time"] = std::chrono::duration<double>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  // Non-finite numbers (a diverged loss) become null rather than invalid JSON.
  const std::string line =
      fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  errno = 0;
  const bool written = std::fwrite(line.data(), 1, line.size(), out_) == line.size() &&
                       std::fflush(out_) == 0;
  if (!written && errno == EPIPE) {
    // Nobody reads the events any more (the agent or the pipe's reader is
    // gone): end as SIGPIPE's default action would, though main() ignores it
    // for sockets.
    std::signal(SIGPIPE, SIG_DFL);
    std::raise(SIGPIPE);
  }
}

}  // namespace tern::trainer
