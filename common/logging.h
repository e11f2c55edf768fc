// Human-readable logs on stderr, one line per message.
//
// Usage: TERN_LOG(INFO) << "listening on " << port;
// A component that logs a lot builds its prefix once ("[job 42 rank 1/4] ")
// with SetLogPrefix(); it is per process. Each line is written with a single
// fwrite, so lines from different threads never interleave.
// Machine-readable output (events, metrics) never goes through here.
#ifndef TERN_COMMON_LOGGING_H_
#define TERN_COMMON_LOGGING_H_

#include <sstream>
#include <string>

namespace tern {

enum class LogSeverity { kDebug, kInfo, kWarning, kError };

// Sets the prefix written after the severity tag on every later line.
void SetLogPrefix(std::string prefix);
// Lines below this severity are dropped (default kInfo; TERN_LOG_LEVEL=debug).
void SetMinLogSeverity(LogSeverity severity);
bool LogEnabled(LogSeverity severity);

namespace internal {
class LogLine {
 public:
  LogLine(LogSeverity severity, const char* file, int line);
  ~LogLine();
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace tern

#define TERN_LOG_SEVERITY_DEBUG ::tern::LogSeverity::kDebug
#define TERN_LOG_SEVERITY_INFO ::tern::LogSeverity::kInfo
#define TERN_LOG_SEVERITY_WARNING ::tern::LogSeverity::kWarning
#define TERN_LOG_SEVERITY_ERROR ::tern::LogSeverity::kError

#define TERN_LOG(severity)                                         \
  if (!::tern::LogEnabled(TERN_LOG_SEVERITY_##severity)) {         \
  } else                                                           \
    ::tern::internal::LogLine(TERN_LOG_SEVERITY_##severity, __FILE__, \
                              __LINE__)                            \
        .stream()

#endif  // TERN_COMMON_LOGGING_H_
