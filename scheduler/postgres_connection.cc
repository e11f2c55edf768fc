#include "scheduler/postgres_connection.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/logging.h"

namespace tern::scheduler::pg {
namespace {

// Type OIDs of the parameters (pg_type.dat; stable since PostgreSQL 7).
constexpr unsigned kInt8Oid = 20;
constexpr unsigned kTextOid = 25;
constexpr unsigned kByteaOid = 17;

// pg_advisory_xact_lock key of the schema bootstrap: "tern" in ASCII.
constexpr int64_t kSchemaLockKey = 0x7465726e;

// Steps sent before their results are read: bounded so that neither side
// fills its socket buffer while the other waits (libpq's blocking mode).
constexpr size_t kPipelineChunk = 256;

constexpr const char* kTables[] = {"tern_schema", "jobs",           "job_labels",  "job_ranks",
                                   "job_events",  "store_counters", "leader_lease"};

// Version 2, as SqliteJobStore's version 2 holds it (the same columns and
// meaning; times in microseconds since the epoch), plus the leader lease.
constexpr const char* kSchema[] = {
    R"sql(CREATE TABLE IF NOT EXISTS tern_schema (
      singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
      version INTEGER NOT NULL))sql",
    R"sql(CREATE TABLE jobs (
      id BIGINT PRIMARY KEY,
      owner TEXT NOT NULL,
      priority INTEGER NOT NULL,
      world_size INTEGER NOT NULL,
      device_kind TEXT NOT NULL,
      max_restarts INTEGER NOT NULL,
      idempotency_key TEXT NOT NULL,
      spec BYTEA NOT NULL,
      submit_time_us BIGINT NOT NULL,
      state TEXT NOT NULL,
      restarts_used INTEGER NOT NULL,
      attempt INTEGER NOT NULL,
      last_checkpoint_step BIGINT,
      artifact_path TEXT NOT NULL,
      metrics_json TEXT NOT NULL,
      last_event_seq BIGINT NOT NULL,
      rendezvous_host TEXT NOT NULL,
      rendezvous_port INTEGER NOT NULL,
      restart_not_before_us BIGINT NOT NULL,
      failure_attempt INTEGER NOT NULL DEFAULT 0,
      failure_rank INTEGER NOT NULL DEFAULT 0,
      failure_agent_id TEXT NOT NULL DEFAULT '',
      failure_exit_code INTEGER NOT NULL DEFAULT 0,
      failure_signal INTEGER NOT NULL DEFAULT 0,
      failure_trainer_code TEXT NOT NULL DEFAULT '',
      failure_reason TEXT NOT NULL DEFAULT '',
      failure_message TEXT NOT NULL DEFAULT '',
      failure_time_us BIGINT NOT NULL DEFAULT 0))sql",
    R"sql(CREATE UNIQUE INDEX jobs_by_idempotency_key
      ON jobs (owner, idempotency_key) WHERE idempotency_key <> '')sql",
    R"sql(CREATE TABLE job_labels (
      job_id BIGINT NOT NULL,
      key TEXT NOT NULL,
      value TEXT NOT NULL,
      PRIMARY KEY (job_id, key)))sql",
    R"sql(CREATE TABLE job_ranks (
      job_id BIGINT NOT NULL,
      rank INTEGER NOT NULL,
      agent_id TEXT NOT NULL,
      state TEXT NOT NULL,
      exit_code INTEGER NOT NULL,
      PRIMARY KEY (job_id, rank)))sql",
    R"sql(CREATE TABLE job_events (
      job_id BIGINT NOT NULL,
      seq BIGINT NOT NULL,
      time_us BIGINT NOT NULL,
      type TEXT NOT NULL,
      from_state TEXT NOT NULL,
      to_state TEXT NOT NULL,
      reason TEXT NOT NULL,
      message TEXT NOT NULL,
      payload TEXT NOT NULL,
      step BIGINT NOT NULL,
      PRIMARY KEY (job_id, seq)))sql",
    // Counters that outlive rows: highest_deleted_job_id (HighestJobIdEver).
    R"sql(CREATE TABLE store_counters (
      name TEXT PRIMARY KEY,
      value BIGINT NOT NULL))sql",
    // The one lease of PostgresLeaderElection; epoch 0: nobody ever led.
    R"sql(CREATE TABLE leader_lease (
      singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
      epoch BIGINT NOT NULL,
      holder TEXT NOT NULL,
      address TEXT NOT NULL,
      expires_at TIMESTAMPTZ NOT NULL))sql",
    "INSERT INTO leader_lease VALUES (TRUE, 0, '', '', '-infinity')",
};

// The statement for messages: whitespace collapsed, at most 120 characters.
std::string Excerpt(std::string_view sql) {
  std::string out;
  for (char c : sql) {
    const bool space = c == ' ' || c == '\n' || c == '\t';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
    if (out.size() >= 120) return out + "...";
  }
  return out;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool IsOk(const PGresult* r) {
  const ExecStatusType s = PQresultStatus(r);
  return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

}  // namespace

std::string RedactUrl(std::string_view url) {
  std::string out(url);
  // user:PASSWORD@ in the authority.
  const size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    const size_t start = scheme + 3;
    const size_t end = std::min(out.find('/', start), out.find('?', start));
    const size_t at = out.rfind('@', end == std::string::npos ? out.size() : end);
    if (at != std::string::npos && at >= start) {
      const size_t colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  // password=VALUE among the query parameters.
  for (size_t p = out.find("password="); p != std::string::npos; p = out.find("password=", p + 1)) {
    if (p > 0 && out[p - 1] != '?' && out[p - 1] != '&') continue;
    const size_t value = p + std::strlen("password=");
    const size_t end = out.find('&', value);
    out.replace(value, (end == std::string::npos ? out.size() : end) - value, "***");
  }
  return out;
}

Params& Params::Int(int64_t v) {
  values_.push_back(std::to_string(v));
  types_.push_back(kInt8Oid);
  formats_.push_back(0);
  null_.push_back(false);
  return *this;
}

Params& Params::OptionalInt(const std::optional<int64_t>& v) {
  if (v.has_value()) return Int(*v);
  values_.emplace_back();
  types_.push_back(kInt8Oid);
  formats_.push_back(0);
  null_.push_back(true);
  return *this;
}

Params& Params::Text(std::string_view v) {
  values_.emplace_back(v);
  types_.push_back(kTextOid);
  formats_.push_back(1);  // binary: the exact bytes, a NUL is an error, not the end
  null_.push_back(false);
  return *this;
}

Params& Params::Bytes(std::string_view v) {
  values_.emplace_back(v);
  types_.push_back(kByteaOid);
  formats_.push_back(1);
  null_.push_back(false);
  return *this;
}

Result::Result(pg_result* r) : r_(r) {}
Result::Result(Result&& other) noexcept : r_(std::exchange(other.r_, nullptr)) {}
Result& Result::operator=(Result&& other) noexcept {
  if (this != &other) {
    PQclear(r_);
    r_ = std::exchange(other.r_, nullptr);
  }
  return *this;
}
Result::~Result() { PQclear(r_); }

int Result::rows() const { return r_ == nullptr ? 0 : PQntuples(r_); }
bool Result::IsNull(int row, int col) const { return PQgetisnull(r_, row, col) != 0; }
std::string Result::Text(int row, int col) const {
  return std::string(PQgetvalue(r_, row, col), static_cast<size_t>(PQgetlength(r_, row, col)));
}
int64_t Result::Int(int row, int col) const {
  return std::strtoll(PQgetvalue(r_, row, col), nullptr, 10);
}
std::string Result::Bytes(int row, int col) const {
  size_t size = 0;
  unsigned char* bytes =
      PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r_, row, col)), &size);
  if (bytes == nullptr) return std::string();
  std::string out(reinterpret_cast<const char*>(bytes), size);
  PQfreemem(bytes);
  return out;
}
int64_t Result::affected() const {
  return r_ == nullptr ? 0 : std::strtoll(PQcmdTuples(r_), nullptr, 10);
}

Connection::Connection(std::string url, std::string display_url)
    : url_(std::move(url)), display_url_(std::move(display_url)) {}

Connection::~Connection() { Drop(); }

void Connection::Drop() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

StatusOr<std::unique_ptr<Connection>> Connection::Open(const std::string& url) {
  const std::string display = RedactUrl(url);
  if (url.rfind("postgresql://", 0) != 0 && url.rfind("postgres://", 0) != 0) {
    return InvalidArgumentError("\"" + display + "\" is not a postgresql:// or postgres:// URL");
  }
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &error);
  if (parsed == nullptr) {
    std::string message = error != nullptr ? Trim(error) : "out of memory";
    PQfreemem(error);
    return InvalidArgumentError("malformed PostgreSQL URL \"" + display + "\": " + message);
  }
  PQconninfoFree(parsed);
  std::unique_ptr<Connection> c(new Connection(url, display));
  TERN_RETURN_IF_ERROR(c->Connect());
  TERN_RETURN_IF_ERROR(c->EnsureSchema());
  return c;
}

Status Connection::Connect() {
  Drop();
  // Defaults first: the URL's own settings, expanded from dbname, override them.
  const char* const keys[] = {"connect_timeout", "application_name", "client_encoding", "dbname",
                              nullptr};
  const char* const values[] = {"10", "tern", "UTF8", url_.c_str(), nullptr};
  conn_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn_ == nullptr) return InternalError("PQconnectdbParams: out of memory");
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string message = Trim(PQerrorMessage(conn_));
    Drop();
    return UnavailableError("cannot connect to " + display_url_ + ": " + message);
  }
  return OkStatus();
}

Status Connection::EnsureConnected() {
  if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return OkStatus();
  TERN_RETURN_IF_ERROR(Connect());
  TERN_LOG(INFO) << "connected again to " << display_url_;
  return OkStatus();
}

Status Connection::ResultError(const pg_result* r, std::string_view sql) {
  const bool lost = conn_ == nullptr || PQstatus(conn_) == CONNECTION_BAD;
  std::string detail = Trim(r != nullptr       ? PQresultErrorMessage(r)
                            : conn_ != nullptr ? PQerrorMessage(conn_)
                                               : "no connection");
  if (detail.empty() && r != nullptr) detail = PQresStatus(PQresultStatus(r));
  const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const std::string sqlstate = state != nullptr ? state : "";
  std::string message = "\"" + Excerpt(sql) + "\" failed: " + detail;
  if (!sqlstate.empty()) message += " (SQLSTATE " + sqlstate + ")";
  message = display_url_ + ": " + message;
  if (lost) {
    Drop();
    return UnavailableError(message + "; the connection is lost, the next call connects again");
  }
  const std::string cls = sqlstate.substr(0, 2);
  if (sqlstate == "23505") return AlreadyExistsError(std::move(message));
  if (sqlstate == "40001" || sqlstate == "40P01") return AbortedError(std::move(message));
  if (cls == "08" || cls == "53" || cls == "57") return UnavailableError(std::move(message));
  if (cls == "22") return InvalidArgumentError(std::move(message));
  return InternalError(std::move(message));
}

StatusOr<Result> Connection::Exec(const char* sql, const Params& params) {
  TERN_RETURN_IF_ERROR(EnsureConnected());
  std::vector<const char*> values;
  std::vector<int> lengths;
  for (size_t i = 0; i < params.values_.size(); ++i) {
    values.push_back(params.null_[i] ? nullptr : params.values_[i].data());
    lengths.push_back(static_cast<int>(params.values_[i].size()));
  }
  Result result(PQexecParams(conn_, sql, params.size(), params.types_.data(), values.data(),
                             lengths.data(), params.formats_.data(), /*resultFormat=*/0));
  if (!IsOk(result.get())) {
    return ResultError(result.get(), sql);
  }
  return result;
}

Status Connection::Transaction(std::vector<Step>& steps) {
  TERN_RETURN_IF_ERROR(EnsureConnected());
  if (PQenterPipelineMode(conn_) != 1) {
    return InternalError(display_url_ + ": PQenterPipelineMode: " + Trim(PQerrorMessage(conn_)));
  }
  auto send = [&](const char* sql, const Params& params) {
    std::vector<const char*> values;
    std::vector<int> lengths;
    for (size_t i = 0; i < params.values_.size(); ++i) {
      values.push_back(params.null_[i] ? nullptr : params.values_[i].data());
      lengths.push_back(static_cast<int>(params.values_[i].size()));
    }
    return PQsendQueryParams(conn_, sql, params.size(), params.types_.data(), values.data(),
                             lengths.data(), params.formats_.data(), 0) == 1;
  };
  // Lost mid-pipeline: nothing is committed; the connection goes.
  auto lost = [&](std::string_view sql) {
    Status status = ResultError(nullptr, sql);
    Drop();
    return status.code() == StatusCode::kUnavailable
               ? status
               : UnavailableError(status.message() + "; the connection is dropped");
  };

  static const Params kNoParams;
  Status first_error;
  bool begun = false;
  for (size_t next = 0; first_error.ok() && (next < steps.size() || !begun);) {
    std::vector<const Step*> sent;  // nullptr: BEGIN
    if (!begun) {
      if (!send("BEGIN", kNoParams)) return lost("BEGIN");
      sent.push_back(nullptr);
      begun = true;
    }
    const size_t end = std::min(steps.size(), next + kPipelineChunk);
    for (; next < end; ++next) {
      if (!send(steps[next].sql, steps[next].params)) return lost(steps[next].sql);
      sent.push_back(&steps[next]);
    }
    if (PQpipelineSync(conn_) != 1) return lost("pipeline sync");
    for (const Step* step : sent) {
      const char* sql = step == nullptr ? "BEGIN" : step->sql;
      Result result(PQgetResult(conn_));
      pg_result* raw = result.get();
      if (raw == nullptr) return lost(sql);
      const ExecStatusType s = PQresultStatus(raw);
      if (s == PGRES_PIPELINE_ABORTED) {
        // A step after the failing one; the server skipped it.
      } else if (!IsOk(raw)) {
        Status status = ResultError(raw, sql);
        if (conn_ == nullptr) return status;
        if (first_error.ok()) first_error = status;
      } else if (first_error.ok() && step != nullptr && step->check) {
        first_error = step->check(result);
      }
      // The NULL that ends this step's results.
      Result end_of_step(PQgetResult(conn_));
      if (end_of_step.get() != nullptr) {
        Drop();
        return InternalError(display_url_ + ": more than one result for \"" + Excerpt(sql) + "\"");
      }
    }
    Result sync(PQgetResult(conn_));
    pg_result* raw = sync.get();
    if (raw == nullptr || PQresultStatus(raw) != PGRES_PIPELINE_SYNC) return lost("pipeline sync");
  }
  if (PQexitPipelineMode(conn_) != 1) {
    std::string message = Trim(PQerrorMessage(conn_));
    Drop();
    return InternalError(display_url_ + ": PQexitPipelineMode: " + message);
  }
  if (!first_error.ok()) {
    StatusOr<Result> rollback = Exec("ROLLBACK");
    if (!rollback.ok()) {
      TERN_LOG(ERROR) << rollback.status();
    }
    return first_error;
  }
  StatusOr<Result> commit = Exec("COMMIT");
  if (!commit.ok()) {
    if (commit.status().code() == StatusCode::kUnavailable) {
      return commit.status().WithContext("the transaction's outcome is unknown");
    }
    return commit.status();
  }
  return OkStatus();
}

Status Connection::EnsureSchema() {
  TERN_RETURN_IF_ERROR(Exec("BEGIN").status());
  Status status = [&]() -> Status {
    TERN_RETURN_IF_ERROR(
        Exec("SELECT pg_advisory_xact_lock($1)", Params().Int(kSchemaLockKey)).status());
    TERN_ASSIGN_OR_RETURN(Result has_version,
                          Exec("SELECT to_regclass('tern_schema') IS NOT NULL"));
    if (has_version.Text(0, 0) == "t") {
      TERN_ASSIGN_OR_RETURN(Result version, Exec("SELECT version FROM tern_schema"));
      if (version.rows() != 1) {
        return FailedPreconditionError("tern_schema holds " + std::to_string(version.rows()) +
                                       " rows, not 1: not a tern job store");
      }
      const int64_t v = version.Int(0, 0);
      if (v > kSchemaVersion) {
        return FailedPreconditionError("schema version " + std::to_string(v) +
                                       " is newer than this binary's " +
                                       std::to_string(kSchemaVersion) + "; run a newer ternd");
      }
      if (v < kSchemaVersion) {
        return FailedPreconditionError("schema version " + std::to_string(v) +
                                       " predates PostgreSQL support (" +
                                       std::to_string(kSchemaVersion) + "): not a tern job store");
      }
      return OkStatus();
    }
    for (const char* table : kTables) {
      TERN_ASSIGN_OR_RETURN(Result exists,
                            Exec("SELECT to_regclass($1) IS NOT NULL", Params().Text(table)));
      if (exists.Text(0, 0) == "t") {
        return FailedPreconditionError(std::string("table ") + table +
                                       " exists without tern_schema: not a tern job store");
      }
    }
    for (const char* sql : kSchema) TERN_RETURN_IF_ERROR(Exec(sql).status());
    TERN_RETURN_IF_ERROR(
        Exec("INSERT INTO tern_schema (version) VALUES ($1)", Params().Int(kSchemaVersion))
            .status());
    TERN_LOG(INFO) << "created the tern schema (version " << kSchemaVersion << ") in "
                   << display_url_;
    return OkStatus();
  }();
  if (status.ok()) return Exec("COMMIT").status();
  if (status.code() == StatusCode::kFailedPrecondition) status = status.WithContext(display_url_);
  if (conn_ != nullptr) {
    StatusOr<Result> rollback = Exec("ROLLBACK");
    if (!rollback.ok()) {
      TERN_LOG(ERROR) << rollback.status();
    }
  }
  return status;
}

}  // namespace tern::scheduler::pg
