// Status and StatusOr: the value every expected failure returns.
//
// Broken invariants abort (TERN_CHECK, check.h); everything a user, a file or a
// peer can cause (bad request, missing file, lost rank) is a Status. The codes
// mirror gRPC's so server/ converts them one to one. Status is a plain value:
// copy it freely, no thread-safety concerns.
//
// A Status may carry ErrorDetails: the error as data (a stable reason from
// common/error_reasons.h, metadata, the violated fields, quota violations, a
// retry delay) besides the human message. server/rpc.h sends them to gRPC
// clients as google.rpc error details; here they are plain C++ (common/ links
// no protobuf: the LibTorch trainer uses it).
#ifndef TERN_COMMON_STATUS_H_
#define TERN_COMMON_STATUS_H_

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"

namespace tern {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// "INVALID_ARGUMENT" etc., as gRPC spells them.
const char* StatusCodeName(StatusCode code);

// One violated field of a request: `field` is its path in the request
// ("spec.optimization.epochs"), `description` the rule it breaks.
struct FieldViolation {
  std::string field;
  std::string description;
};

// One quota check that failed: `subject` is whose quota ("owner:alice").
struct QuotaViolation {
  std::string subject;
  std::string description;
};

// What an error is, as data. Every member is optional.
struct ErrorDetails {
  std::string reason;  // UPPER_SNAKE, one of common/error_reasons.h; "" for none
  std::map<std::string, std::string> metadata;  // e.g. {"job_id": "42"}
  std::vector<FieldViolation> field_violations;
  std::vector<QuotaViolation> quota_violations;
  std::optional<std::chrono::milliseconds> retry_delay;  // wait at least this long
};

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: batch_size: must be > 0"; "OK" when ok().
  std::string ToString() const;
  // Returns a copy whose message is "<context>: <message>" (same details).
  Status WithContext(const std::string& context) const;

  // The details; nullptr when none were attached (always for OK).
  const ErrorDetails* details() const { return details_.get(); }
  // The reason, "" when none.
  const std::string& reason() const;
  // Copies with one more piece of data attached. On an OK status they return
  // it unchanged (an OK status carries no details).
  Status WithReason(std::string reason) const;
  Status WithMetadata(std::string key, std::string value) const;
  Status WithFieldViolation(std::string field, std::string description) const;
  Status WithQuotaViolation(std::string subject, std::string description) const;
  Status WithRetryDelay(std::chrono::milliseconds delay) const;
  // A copy carrying `details` instead of the ones it had.
  Status WithDetails(ErrorDetails details) const;

 private:
  // A copy whose details are a fresh copy of ours, to modify.
  Status CopyWithDetails(ErrorDetails** details) const;

  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::shared_ptr<const ErrorDetails> details_;  // immutable, shared by copies
};

inline Status OkStatus() { return Status(); }
inline Status InvalidArgumentError(std::string m) {
  return Status(StatusCode::kInvalidArgument, std::move(m));
}
inline Status NotFoundError(std::string m) {
  return Status(StatusCode::kNotFound, std::move(m));
}
inline Status AlreadyExistsError(std::string m) {
  return Status(StatusCode::kAlreadyExists, std::move(m));
}
inline Status FailedPreconditionError(std::string m) {
  return Status(StatusCode::kFailedPrecondition, std::move(m));
}
inline Status DataLossError(std::string m) {
  return Status(StatusCode::kDataLoss, std::move(m));
}
inline Status InternalError(std::string m) {
  return Status(StatusCode::kInternal, std::move(m));
}
inline Status UnavailableError(std::string m) {
  return Status(StatusCode::kUnavailable, std::move(m));
}
inline Status CancelledError(std::string m) {
  return Status(StatusCode::kCancelled, std::move(m));
}
inline Status DeadlineExceededError(std::string m) {
  return Status(StatusCode::kDeadlineExceeded, std::move(m));
}
inline Status AbortedError(std::string m) {
  return Status(StatusCode::kAborted, std::move(m));
}
inline Status UnimplementedError(std::string m) {
  return Status(StatusCode::kUnimplemented, std::move(m));
}

std::ostream& operator<<(std::ostream& os, const Status& status);

// Either a T or a non-OK Status. Accessing the value of an error aborts.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    TERN_CHECK(!status_.ok()) << "StatusOr built from an OK status";
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  const T& value() const& {
    TERN_CHECK(ok()) << status_.ToString();
    return *value_;
  }
  T& value() & {
    TERN_CHECK(ok()) << status_.ToString();
    return *value_;
  }
  T&& value() && {
    TERN_CHECK(ok()) << status_.ToString();
    return std::move(*value_);
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace tern

#define TERN_STATUS_CONCAT_INNER_(a, b) a##b
#define TERN_STATUS_CONCAT_(a, b) TERN_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when it is not OK.
#define TERN_RETURN_IF_ERROR(expr)                    \
  do {                                                \
    ::tern::Status tern_status_ = (expr);             \
    if (!tern_status_.ok()) return tern_status_;      \
  } while (false)

// TERN_ASSIGN_OR_RETURN(auto x, MakeX()); returns the error, else binds x.
#define TERN_ASSIGN_OR_RETURN(lhs, expr)                                    \
  TERN_ASSIGN_OR_RETURN_IMPL_(TERN_STATUS_CONCAT_(tern_sor_, __LINE__), lhs, \
                              expr)
#define TERN_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#endif  // TERN_COMMON_STATUS_H_
