// PgConnection: one libpq connection to a tern store database, opened again
// after it is lost; the part PostgresJobStore and PostgresLeaderElection
// share (scheduler/ only, not a public API).
//
// Open() checks the URL, connects (connect_timeout 10 s unless the URL says
// otherwise) and creates or checks the schema: one transaction holding an
// advisory lock, so that two ternds starting at once create it once. A call
// that finds the connection lost returns UNAVAILABLE and drops it; the next
// call connects again. Every libpq result goes through one helper that names
// the statement, the URL (password removed) and the SQLSTATE. Values travel
// only as parameters (PQsendQueryParams), never inside the SQL text.
// Not thread-safe: the owner serializes its calls (one mutex).
#ifndef TERN_SCHEDULER_POSTGRES_CONNECTION_H_
#define TERN_SCHEDULER_POSTGRES_CONNECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

struct pg_conn;
struct pg_result;

namespace tern::scheduler::pg {

// The schema version this binary creates and reads. The numbers follow
// SqliteJobStore's (the tables hold the same things at the same version);
// 2 is the first PostgreSQL has.
inline constexpr int kSchemaVersion = 2;

// `url` with its password (user:PASSWORD@ or password=...) replaced by "***".
std::string RedactUrl(std::string_view url);

// A statement's parameters, $1, $2, ... in the order added. Integers travel
// as int8, strings as text and bytes as bytea (both in binary form, so that
// their length is exact).
class Params {
 public:
  Params& Int(int64_t v);
  Params& OptionalInt(const std::optional<int64_t>& v);
  Params& Text(std::string_view v);
  Params& Bytes(std::string_view v);
  int size() const { return static_cast<int>(values_.size()); }

 private:
  friend class Connection;
  std::vector<std::string> values_;
  std::vector<unsigned> types_;  // Oid
  std::vector<int> formats_;
  std::vector<bool> null_;
};

// A query's result rows (text form). Move-only; owns the PGresult.
class Result {
 public:
  Result() = default;
  explicit Result(pg_result* r);
  Result(Result&& other) noexcept;
  Result& operator=(Result&& other) noexcept;
  ~Result();

  int rows() const;
  bool IsNull(int row, int col) const;
  std::string Text(int row, int col) const;
  int64_t Int(int row, int col) const;
  std::string Bytes(int row, int col) const;  // a bytea column
  int64_t affected() const;                   // rows an INSERT/UPDATE/DELETE changed
  pg_result* get() const { return r_; }

 private:
  pg_result* r_ = nullptr;
};

// One statement of a pipelined transaction; `check` (optional) turns its
// result into an error (e.g. NOT_FOUND when an UPDATE changed no row).
struct Step {
  const char* sql;
  Params params;
  std::function<Status(const Result&)> check;
};

class Connection {
 public:
  // Connects and creates or checks the schema. INVALID_ARGUMENT for a
  // malformed URL, UNAVAILABLE when the server cannot be reached,
  // FAILED_PRECONDITION for a newer schema or a database whose tables are
  // not tern's; the message names the URL without its password.
  static StatusOr<std::unique_ptr<Connection>> Open(const std::string& url);
  ~Connection();

  const std::string& display_url() const { return display_url_; }

  // Runs one statement (its own transaction unless inside one); reconnects
  // first when the connection was lost.
  StatusOr<Result> Exec(const char* sql, const Params& params = Params());

  // BEGIN, `steps` in order, then COMMIT, sending the steps in pipelined
  // chunks (one round trip per chunk of up to 256 steps). On the first
  // failing step (an SQL error or its check's) everything is rolled back
  // and that error returned. Blocks for the round trips.
  Status Transaction(std::vector<Step>& steps);

 private:
  Connection(std::string url, std::string display_url);
  Status Connect();
  Status EnsureConnected();
  Status EnsureSchema();
  // The error of a failed result (or of none, when r is null); drops the
  // connection when it was lost.
  Status ResultError(const pg_result* r, std::string_view sql);
  void Drop();

  const std::string url_;
  const std::string display_url_;
  pg_conn* conn_ = nullptr;
};

}  // namespace tern::scheduler::pg

#endif  // TERN_SCHEDULER_POSTGRES_CONNECTION_H_
