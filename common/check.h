// TERN_CHECK: aborts with file:line when an invariant is broken.
//
// For programming errors only; anything a user or a peer can cause returns a
// Status (status.h). Usage: TERN_CHECK(n > 0) << "n=" << n;
// Thread-safe: the message is built per call and written with one write.
#ifndef TERN_COMMON_CHECK_H_
#define TERN_COMMON_CHECK_H_

#include <sstream>

namespace tern::internal {

// Collects the message; its destructor prints it and aborts.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Makes `cond ? (void)0 : Voidify() & stream` well-typed.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace tern::internal

#define TERN_CHECK(condition)                    \
  (condition) ? (void)0                          \
              : ::tern::internal::Voidify() &    \
                    ::tern::internal::CheckFailure(__FILE__, __LINE__, \
                                                   #condition)         \
                        .stream()

#endif  // TERN_COMMON_CHECK_H_
