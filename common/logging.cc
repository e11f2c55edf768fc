#include "common/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace tern {
namespace {

std::mutex& PrefixMutex() {
  static std::mutex mu;
  return mu;
}
std::string& Prefix() {
  static std::string prefix;
  return prefix;
}

LogSeverity InitialSeverity() {
  const char* env = std::getenv("TERN_LOG_LEVEL");
  if (env == nullptr) return LogSeverity::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogSeverity::kDebug;
  if (std::strcmp(env, "warning") == 0) return LogSeverity::kWarning;
  if (std::strcmp(env, "error") == 0) return LogSeverity::kError;
  return LogSeverity::kInfo;
}

std::atomic<int>& MinSeverity() {
  static std::atomic<int> severity{static_cast<int>(InitialSeverity())};
  return severity;
}

char SeverityTag(LogSeverity s) {
  switch (s) {
    case LogSeverity::kDebug: return 'D';
    case LogSeverity::kInfo: return 'I';
    case LogSeverity::kWarning: return 'W';
    case LogSeverity::kError: return 'E';
  }
  return '?';
}

}  // namespace

void SetLogPrefix(std::string prefix) {
  std::lock_guard<std::mutex> lock(PrefixMutex());
  Prefix() = std::move(prefix);
}

void SetMinLogSeverity(LogSeverity severity) {
  MinSeverity().store(static_cast<int>(severity));
}

bool LogEnabled(LogSeverity severity) {
  return static_cast<int>(severity) >= MinSeverity().load();
}

namespace internal {

LogLine::LogLine(LogSeverity severity, const char* file, int line)
    : severity_(severity) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  const char* base = std::strrchr(file, '/');
  std::string prefix;
  {
    std::lock_guard<std::mutex> lock(PrefixMutex());
    prefix = Prefix();
  }
  char ms[8];
  std::snprintf(ms, sizeof(ms), ".%03d", millis);
  stream_ << SeverityTag(severity) << stamp << ms << ' '
          << (base ? base + 1 : file) << ':' << line << "] " << prefix;
}

LogLine::~LogLine() {
  stream_ << '\n';
  const std::string text = stream_.str();
  std::fwrite(text.data(), 1, text.size(), stderr);
  if (severity_ >= LogSeverity::kWarning) std::fflush(stderr);
}

}  // namespace internal
}  // namespace tern
