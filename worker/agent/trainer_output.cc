#include "worker/agent/trainer_output.h"

#include <google/protobuf/util/time_util.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include "common/utf8.h"
#include "worker/agent/event_outbox.h"

namespace tern::agent {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxLineBytes = 1 << 20;  // longer stdout lines are cut

}  // namespace

bool LineReader::Read(int fd, std::vector<std::string>* lines) {
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        if (buf[i] == '\n') {
          lines->push_back(std::move(partial_));
          partial_.clear();
        } else if (partial_.size() < kMaxLineBytes) {
          partial_ += buf[i];
        }
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    // EOF: a last line without a newline still counts.
    if (!partial_.empty()) lines->push_back(std::move(partial_));
    partial_.clear();
    return false;
  }
}

TrainerOutput::TrainerOutput(const v1::JobSpec& spec, int pid, Options options,
                             TrainerMetrics* metrics, std::string job, std::string rank_label)
    : options_(options),
      parser_(spec, pid),
      metrics_(metrics),
      job_(std::move(job)),
      rank_label_(std::move(rank_label)) {}

bool TrainerOutput::Poll(const ChildProcess& child, std::chrono::milliseconds timeout) const {
  std::vector<pollfd> fds;
  if (child.stdout_fd() >= 0) fds.push_back({child.stdout_fd(), POLLIN, 0});
  if (child.stderr_fd() >= 0) fds.push_back({child.stderr_fd(), POLLIN, 0});
  if (fds.empty()) {
    std::this_thread::sleep_for(timeout);
    return true;
  }
  return ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count())) > 0;
}

Clock::time_point TrainerOutput::Read(ChildProcess& child, std::deque<v1::TrainerEvent>* pending) {
  Clock::time_point due = Clock::time_point::max();
  const google::protobuf::Timestamp read_time = google::protobuf::util::TimeUtil::GetCurrentTime();
  std::vector<std::string> lines;
  if (child.stdout_fd() >= 0 && !out_reader_.Read(child.stdout_fd(), &lines)) {
    child.CloseStdout();
  }
  for (std::string& line : lines) {
    trainer::ParsedLine p = parser_.ParseStdoutLine(line, read_time);
    metrics_->Update(job_, rank_label_, p, &metrics_window_);
    if (p.event.has_failed()) {
      failed_reason_ = p.event.failed().code() + ": " + p.event.failed().message();
    }
    // A checkpoint is sent at once too: ternd ignores reports of an attempt it
    // has moved past, and a drained job restarts as soon as any rank exits.
    const bool urgent =
        p.kind == "started" || p.kind == "finished" || p.kind == "failed" || p.kind == "checkpoint";
    pending->push_back(std::move(p.event));
    due = std::min(due, urgent ? Clock::now() : Clock::now() + options_.flush_interval);
  }
  lines.clear();
  if (child.stderr_fd() >= 0 && !err_reader_.Read(child.stderr_fd(), &lines)) {
    child.CloseStderr();
  }
  for (std::string& line : lines) {
    if (options_.relay_logs) {
      pending->push_back(trainer::TrainerEventParser::LogEvent(options_.rank, line, read_time));
      due = std::min(due, Clock::now() + options_.flush_interval);
    }
    tail_.push_back(ToValidUtf8(line, trainer::kMaxLogLineBytes));
    while (static_cast<int>(tail_.size()) > options_.stderr_tail_lines) tail_.pop_front();
  }
  if (pending->size() >= kMaxEventsPerReport) due = Clock::now();
  return due;
}

}  // namespace tern::agent
