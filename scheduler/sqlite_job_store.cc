#include "scheduler/sqlite_job_store.h"

#include <sqlite3.h>

#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

#include "common/logging.h"

namespace tern::scheduler {
namespace {

// The one place an sqlite3 result code becomes a Status. SQLITE_OK, _ROW and
// _DONE are success; anything else names the call, where it was made, the
// code and the connection's last error message.
Status SqliteStatus(sqlite3* db, int rc, const char* call, const char* file,
                    int line) {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) {
    return OkStatus();
  }
  const char* base = std::strrchr(file, '/');
  std::string message = std::string(call) + " failed at " +
                        (base ? base + 1 : file) + ":" + std::to_string(line) +
                        ": " + sqlite3_errstr(rc) + " (" + std::to_string(rc) +
                        ")";
  if (db != nullptr) {
    const char* detail = sqlite3_errmsg(db);
    if (detail != nullptr && std::strcmp(detail, sqlite3_errstr(rc)) != 0) {
      message += ": ";
      message += detail;
    }
  }
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return DataLossError(std::move(message));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return UnavailableError(std::move(message));
    case SQLITE_CONSTRAINT:
      return AlreadyExistsError(std::move(message));
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return FailedPreconditionError(std::move(message));
    default:
      return InternalError(std::move(message));
  }
}

// Returns from the enclosing function when the sqlite3_* call fails.
#define TERN_SQLITE_CHECK(db, call) \
  TERN_RETURN_IF_ERROR(SqliteStatus((db), (call), #call, __FILE__, __LINE__))

struct StmtFinalizer {
  bool cached = false;  // owned by a StatementCache: reset, not finalized
  void operator()(sqlite3_stmt* stmt) const {
    if (!cached) {
      sqlite3_finalize(stmt);
      return;
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
  }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

struct Blob {
  std::string_view bytes;
};

// A prepared statement: RAII over sqlite3_stmt, checked binds and steps.
class Statement {
 public:
  static StatusOr<Statement> Prepare(sqlite3* db, const char* sql) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
    StmtPtr stmt(raw);
    TERN_RETURN_IF_ERROR(
        SqliteStatus(db, rc, "sqlite3_prepare_v2", __FILE__, __LINE__)
            .WithContext(sql));
    return Statement(db, std::move(stmt));
  }
  // Uses a statement a cache keeps prepared; resets it when done.
  static Statement Reuse(sqlite3* db, sqlite3_stmt* cached) {
    return Statement(db, StmtPtr(cached, StmtFinalizer{true}));
  }

  Status Bind(int i, int64_t v) {
    TERN_SQLITE_CHECK(db_, sqlite3_bind_int64(stmt_.get(), i, v));
    return OkStatus();
  }
  Status Bind(int i, std::string_view text) {
    TERN_SQLITE_CHECK(
        db_, sqlite3_bind_text64(stmt_.get(), i, text.data(), text.size(),
                                 SQLITE_TRANSIENT, SQLITE_UTF8));
    return OkStatus();
  }
  Status Bind(int i, Blob blob) {
    // A zero-length blob must not bind as NULL (NOT NULL column).
    static const char kEmpty = 0;
    const char* data = blob.bytes.empty() ? &kEmpty : blob.bytes.data();
    TERN_SQLITE_CHECK(
        db_, sqlite3_bind_blob64(stmt_.get(), i, data, blob.bytes.size(),
                                 SQLITE_TRANSIENT));
    return OkStatus();
  }
  Status Bind(int i, const std::optional<int64_t>& v) {
    if (v.has_value()) return Bind(i, *v);
    TERN_SQLITE_CHECK(db_, sqlite3_bind_null(stmt_.get(), i));
    return OkStatus();
  }

  // Binds the arguments to parameters 1, 2, ... in order.
  template <typename... Args>
  Status BindAll(const Args&... args) {
    Status status;
    int i = 0;
    ((status.ok() ? (status = BindOne(++i, args), 0) : 0), ...);
    return status;
  }

  // True when a row is ready, false when the statement is done.
  StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_.get());
    TERN_RETURN_IF_ERROR(
        SqliteStatus(db_, rc, "sqlite3_step", __FILE__, __LINE__)
            .WithContext(sqlite3_sql(stmt_.get())));
    return rc == SQLITE_ROW;
  }
  // Steps a statement that returns no rows.
  Status Run() {
    TERN_ASSIGN_OR_RETURN(bool row, Step());
    (void)row;
    return OkStatus();
  }

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  bool IsNull(int col) const {
    return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL;
  }
  std::string Text(int col) const {
    const void* data = sqlite3_column_blob(stmt_.get(), col);
    int size = sqlite3_column_bytes(stmt_.get(), col);
    if (data == nullptr || size <= 0) return std::string();
    return std::string(static_cast<const char*>(data),
                       static_cast<size_t>(size));
  }

 private:
  Statement(sqlite3* db, StmtPtr stmt) : db_(db), stmt_(std::move(stmt)) {}

  template <typename T>
  Status BindOne(int i, const T& v) {
    if constexpr (std::is_integral_v<T>) {
      return Bind(i, static_cast<int64_t>(v));
    } else {
      return Bind(i, v);
    }
  }

  sqlite3* db_;
  StmtPtr stmt_;
};

Status Exec(sqlite3* db, const char* sql) {
  TERN_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, sql));
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return OkStatus();
  }
}

}  // namespace

// The write path's statements, prepared once per connection (a batch of
// hundreds of writes would otherwise prepare each of them hundreds of
// times). Keyed by the SQL literal's address.
class SqliteStatementCache {
 public:
  explicit SqliteStatementCache(sqlite3* db) : db_(db) {}
  ~SqliteStatementCache() {
    for (auto& [sql, stmt] : stmts_) sqlite3_finalize(stmt);
  }
  sqlite3* db() const { return db_; }
  StatusOr<Statement> Get(const char* sql) {
    auto it = stmts_.find(sql);
    if (it == stmts_.end()) {
      sqlite3_stmt* raw = nullptr;
      const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
      if (rc != SQLITE_OK) sqlite3_finalize(raw);
      TERN_RETURN_IF_ERROR(
          SqliteStatus(db_, rc, "sqlite3_prepare_v3", __FILE__, __LINE__).WithContext(sql));
      it = stmts_.emplace(sql, raw).first;
    }
    return Statement::Reuse(db_, it->second);
  }
  Status Exec(const char* sql) {
    TERN_ASSIGN_OR_RETURN(Statement stmt, Get(sql));
    for (;;) {
      TERN_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return OkStatus();
    }
  }

 private:
  sqlite3* const db_;
  std::map<const char*, sqlite3_stmt*> stmts_;
};

namespace {

// Runs `body` inside BEGIN IMMEDIATE ... COMMIT with cached statements;
// rolls back on any error.
Status InTransaction(SqliteStatementCache& c, const std::function<Status()>& body) {
  TERN_RETURN_IF_ERROR(c.Exec("BEGIN IMMEDIATE"));
  Status status = body();
  if (status.ok()) status = c.Exec("COMMIT");
  if (!status.ok() && !sqlite3_get_autocommit(c.db())) {
    Status rollback = c.Exec("ROLLBACK");
    if (!rollback.ok()) {
      TERN_LOG(ERROR) << "job store: " << rollback;
    }
  }
  return status;
}

// Runs `body` inside BEGIN IMMEDIATE ... COMMIT; rolls back on any error.
Status InTransaction(sqlite3* db, const std::function<Status()>& body) {
  TERN_RETURN_IF_ERROR(Exec(db, "BEGIN IMMEDIATE"));
  Status status = body();
  if (status.ok()) status = Exec(db, "COMMIT");
  if (!status.ok() && !sqlite3_get_autocommit(db)) {
    Status rollback = Exec(db, "ROLLBACK");
    if (!rollback.ok()) {
      TERN_LOG(ERROR) << "job store: " << rollback;
    }
  }
  return status;
}

constexpr const char* kSchemaV1[] = {
    R"sql(CREATE TABLE jobs (
      id INTEGER PRIMARY KEY,
      owner TEXT NOT NULL,
      priority INTEGER NOT NULL,
      world_size INTEGER NOT NULL,
      device_kind TEXT NOT NULL,
      max_restarts INTEGER NOT NULL,
      idempotency_key TEXT NOT NULL,
      spec BLOB NOT NULL,
      submit_time_us INTEGER NOT NULL,
      state TEXT NOT NULL,
      restarts_used INTEGER NOT NULL,
      attempt INTEGER NOT NULL,
      last_checkpoint_step INTEGER,
      artifact_path TEXT NOT NULL,
      metrics_json TEXT NOT NULL,
      last_event_seq INTEGER NOT NULL,
      rendezvous_host TEXT NOT NULL,
      rendezvous_port INTEGER NOT NULL,
      restart_not_before_us INTEGER NOT NULL))sql",
    R"sql(CREATE UNIQUE INDEX jobs_by_idempotency_key
      ON jobs (owner, idempotency_key) WHERE idempotency_key <> '')sql",
    R"sql(CREATE TABLE job_labels (
      job_id INTEGER NOT NULL,
      key TEXT NOT NULL,
      value TEXT NOT NULL,
      PRIMARY KEY (job_id, key)) WITHOUT ROWID)sql",
    R"sql(CREATE TABLE job_ranks (
      job_id INTEGER NOT NULL,
      rank INTEGER NOT NULL,
      agent_id TEXT NOT NULL,
      state TEXT NOT NULL,
      exit_code INTEGER NOT NULL,
      PRIMARY KEY (job_id, rank)) WITHOUT ROWID)sql",
    R"sql(CREATE TABLE job_events (
      job_id INTEGER NOT NULL,
      seq INTEGER NOT NULL,
      time_us INTEGER NOT NULL,
      type TEXT NOT NULL,
      from_state TEXT NOT NULL,
      to_state TEXT NOT NULL,
      reason TEXT NOT NULL,
      message TEXT NOT NULL,
      payload TEXT NOT NULL,
      step INTEGER NOT NULL,
      PRIMARY KEY (job_id, seq)) WITHOUT ROWID)sql",
};

// kMigrations[i] takes a database from version i + 1 to i + 2 (run inside
// the opening transaction, with PRAGMA user_version set after each).
constexpr const char* kMigrationV1ToV2[] = {
    // Job::last_failure; failure_attempt 0: none (every failure has attempt >= 1).
    "ALTER TABLE jobs ADD COLUMN failure_attempt INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN failure_rank INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN failure_agent_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN failure_exit_code INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN failure_signal INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN failure_trainer_code TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN failure_reason TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN failure_message TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN failure_time_us INTEGER NOT NULL DEFAULT 0",
    // Counters that outlive rows: highest_deleted_job_id (HighestJobIdEver).
    R"sql(CREATE TABLE store_counters (
      name TEXT PRIMARY KEY,
      value INTEGER NOT NULL) WITHOUT ROWID)sql",
};

struct Migration {
  const char* const* statements;
  size_t count;
};
constexpr Migration kMigrations[] = {
    {kMigrationV1ToV2, std::size(kMigrationV1ToV2)},
};
static_assert(std::size(kMigrations) + 1 == SqliteJobStore::kSchemaVersion,
              "one migration per schema version after 1");

// Job::last_failure as the failure_* columns' values.
struct FailureColumns {
  int64_t attempt = 0;
  int64_t rank = 0;
  std::string agent_id;
  int64_t exit_code = 0;
  int64_t signal = 0;
  std::string trainer_code;
  std::string reason;
  std::string message;
  int64_t time_us = 0;

  explicit FailureColumns(const std::optional<RankFailure>& f) {
    if (!f) return;
    attempt = f->attempt;
    rank = f->rank;
    agent_id = f->agent_id;
    exit_code = f->exit_code;
    signal = f->signal;
    trainer_code = f->trainer_code;
    reason = f->reason;
    message = f->message;
    time_us = ToUnixMicros(f->time);
  }
};

Status WriteRanks(SqliteStatementCache& c, const Job& job) {
  TERN_ASSIGN_OR_RETURN(Statement del, c.Get("DELETE FROM job_ranks WHERE job_id = ?"));
  TERN_RETURN_IF_ERROR(del.BindAll(job.id));
  TERN_RETURN_IF_ERROR(del.Run());
  for (const RankPlacement& r : job.ranks) {
    TERN_ASSIGN_OR_RETURN(Statement ins, c.Get("INSERT INTO job_ranks (job_id, rank, agent_id, "
                                               "state, exit_code) VALUES (?, ?, ?, ?, ?)"));
    TERN_RETURN_IF_ERROR(ins.BindAll(job.id, r.rank, r.agent_id,
                                     RankStateName(r.state), r.exit_code));
    TERN_RETURN_IF_ERROR(ins.Run());
  }
  return OkStatus();
}

Status AppendEvents(SqliteStatementCache& c, JobId id, const std::vector<JobEvent>& events) {
  for (const JobEvent& e : events) {
    TERN_ASSIGN_OR_RETURN(Statement ins,
                          c.Get("INSERT INTO job_events (job_id, seq, time_us, type, from_state, "
                                "to_state, reason, message, payload, step) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    TERN_RETURN_IF_ERROR(ins.BindAll(id, e.seq, ToUnixMicros(e.time),
                                     JobEventTypeName(e.type),
                                     JobStateName(e.from), JobStateName(e.to),
                                     e.reason, e.message, e.payload, e.step));
    TERN_RETURN_IF_ERROR(ins.Run());
  }
  return OkStatus();
}

// The rows of a new job (CreateJob's contract), inside a transaction.
Status InsertJobRows(SqliteStatementCache& c, const Job& job, const std::vector<JobEvent>& events) {
  TERN_ASSIGN_OR_RETURN(Statement ins,
                        c.Get("INSERT INTO jobs (id, owner, priority, world_size, device_kind, "
                              "max_restarts, idempotency_key, spec, submit_time_us, state, "
                              "restarts_used, attempt, last_checkpoint_step, artifact_path, "
                              "metrics_json, last_event_seq, rendezvous_host, rendezvous_port, "
                              "restart_not_before_us, failure_attempt, failure_rank, "
                              "failure_agent_id, failure_exit_code, failure_signal, "
                              "failure_trainer_code, failure_reason, failure_message, "
                              "failure_time_us) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                              "?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  const FailureColumns f(job.last_failure);
  TERN_RETURN_IF_ERROR(ins.BindAll(
      job.id, job.owner, job.priority, job.world_size, job.device_kind, job.max_restarts,
      job.idempotency_key, Blob{job.spec}, ToUnixMicros(job.submit_time), JobStateName(job.state),
      job.restarts_used, job.attempt, job.last_checkpoint_step, job.artifact_path, job.metrics_json,
      job.last_event_seq, job.rendezvous_host, job.rendezvous_port,
      ToUnixMicros(job.restart_not_before), f.attempt, f.rank, f.agent_id, f.exit_code, f.signal,
      f.trainer_code, f.reason, f.message, f.time_us));
  TERN_RETURN_IF_ERROR(ins.Run());
  for (const auto& [key, value] : job.labels) {
    TERN_ASSIGN_OR_RETURN(Statement label, c.Get("INSERT INTO job_labels (job_id, key, value) "
                                                 "VALUES (?, ?, ?)"));
    TERN_RETURN_IF_ERROR(label.BindAll(job.id, key, value));
    TERN_RETURN_IF_ERROR(label.Run());
  }
  TERN_RETURN_IF_ERROR(WriteRanks(c, job));
  return AppendEvents(c, job.id, events);
}

// An existing job's mutable fields (UpdateJob's contract), inside a
// transaction.
Status UpdateJobRows(SqliteStatementCache& c, const Job& job, const std::vector<JobEvent>& events) {
  TERN_ASSIGN_OR_RETURN(Statement upd,
                        c.Get("UPDATE jobs SET state = ?, restarts_used = ?, attempt = ?, "
                              "last_checkpoint_step = ?, artifact_path = ?, metrics_json = ?, "
                              "last_event_seq = ?, rendezvous_host = ?, rendezvous_port = ?, "
                              "restart_not_before_us = ?, failure_attempt = ?, failure_rank = ?, "
                              "failure_agent_id = ?, failure_exit_code = ?, failure_signal = ?, "
                              "failure_trainer_code = ?, failure_reason = ?, "
                              "failure_message = ?, failure_time_us = ? WHERE id = ?"));
  const FailureColumns f(job.last_failure);
  TERN_RETURN_IF_ERROR(upd.BindAll(
      JobStateName(job.state), job.restarts_used, job.attempt, job.last_checkpoint_step,
      job.artifact_path, job.metrics_json, job.last_event_seq, job.rendezvous_host,
      job.rendezvous_port, ToUnixMicros(job.restart_not_before), f.attempt, f.rank, f.agent_id,
      f.exit_code, f.signal, f.trainer_code, f.reason, f.message, f.time_us, job.id));
  TERN_RETURN_IF_ERROR(upd.Run());
  if (sqlite3_changes(c.db()) != 1) {
    return NotFoundError("job " + std::to_string(job.id) + " is not in the job store");
  }
  TERN_RETURN_IF_ERROR(WriteRanks(c, job));
  return AppendEvents(c, job.id, events);
}

// A new spec and labels of an existing job (JobWrite::Kind::kRelabel).
Status RelabelJobRows(SqliteStatementCache& c, const Job& job) {
  TERN_ASSIGN_OR_RETURN(Statement upd, c.Get("UPDATE jobs SET spec = ? WHERE id = ?"));
  TERN_RETURN_IF_ERROR(upd.BindAll(Blob{job.spec}, job.id));
  TERN_RETURN_IF_ERROR(upd.Run());
  if (sqlite3_changes(c.db()) != 1) {
    return NotFoundError("job " + std::to_string(job.id) + " is not in the job store");
  }
  TERN_ASSIGN_OR_RETURN(Statement del, c.Get("DELETE FROM job_labels WHERE job_id = ?"));
  TERN_RETURN_IF_ERROR(del.BindAll(job.id));
  TERN_RETURN_IF_ERROR(del.Run());
  for (const auto& [key, value] : job.labels) {
    TERN_ASSIGN_OR_RETURN(Statement label, c.Get("INSERT INTO job_labels (job_id, key, value) "
                                                 "VALUES (?, ?, ?)"));
    TERN_RETURN_IF_ERROR(label.BindAll(job.id, key, value));
    TERN_RETURN_IF_ERROR(label.Run());
  }
  return OkStatus();
}

// Every row of a job (JobWrite::Kind::kDelete).
Status DeleteJobRows(SqliteStatementCache& c, JobId id) {
  for (const char* sql :
       {"DELETE FROM job_events WHERE job_id = ?", "DELETE FROM job_ranks WHERE job_id = ?",
        "DELETE FROM job_labels WHERE job_id = ?"}) {
    TERN_ASSIGN_OR_RETURN(Statement del, c.Get(sql));
    TERN_RETURN_IF_ERROR(del.BindAll(id));
    TERN_RETURN_IF_ERROR(del.Run());
  }
  TERN_ASSIGN_OR_RETURN(Statement del, c.Get("DELETE FROM jobs WHERE id = ?"));
  TERN_RETURN_IF_ERROR(del.BindAll(id));
  TERN_RETURN_IF_ERROR(del.Run());
  if (sqlite3_changes(c.db()) != 1) {
    return NotFoundError("job " + std::to_string(id) + " is not in the job store");
  }
  // Its id stays taken (HighestJobIdEver), also when it was the newest.
  TERN_ASSIGN_OR_RETURN(Statement mark,
                        c.Get("INSERT INTO store_counters (name, value) "
                              "VALUES ('highest_deleted_job_id', ?) ON CONFLICT (name) "
                              "DO UPDATE SET value = max(value, excluded.value)"));
  TERN_RETURN_IF_ERROR(mark.BindAll(id));
  return mark.Run();
}

Status WriteJobRows(SqliteStatementCache& c, const JobWrite& w) {
  switch (w.kind) {
    case JobWrite::Kind::kCreate:
      return InsertJobRows(c, w.job, w.events);
    case JobWrite::Kind::kUpdate:
      return UpdateJobRows(c, w.job, w.events);
    case JobWrite::Kind::kRelabel:
      return RelabelJobRows(c, w.job);
    case JobWrite::Kind::kDelete:
      return DeleteJobRows(c, w.job.id);
  }
  return InternalError("unknown JobWrite kind");
}

constexpr char kEventColumns[] =
    "seq, time_us, type, from_state, to_state, reason, message, payload, step";

// Reads kEventColumns starting at column `c`.
StatusOr<JobEvent> ReadEventRow(const Statement& s, int c) {
  JobEvent e;
  e.seq = s.Int(c + 0);
  e.time = FromUnixMicros(s.Int(c + 1));
  TERN_ASSIGN_OR_RETURN(e.type, ParseJobEventType(s.Text(c + 2)));
  TERN_ASSIGN_OR_RETURN(e.from, ParseJobState(s.Text(c + 3)));
  TERN_ASSIGN_OR_RETURN(e.to, ParseJobState(s.Text(c + 4)));
  e.reason = s.Text(c + 5);
  e.message = s.Text(c + 6);
  e.payload = s.Text(c + 7);
  e.step = s.Int(c + 8);
  return e;
}

Status Corrupt(const Status& status, JobId id) {
  return DataLossError("job store row of job " + std::to_string(id) + ": " +
                       status.message());
}

}  // namespace

Status SqliteJobStoreOptions::Validate() const {
  if (busy_timeout.count() < 0) {
    return InvalidArgumentError("busy_timeout: must be >= 0");
  }
  return OkStatus();
}

void SqliteJobStore::DbCloser::operator()(sqlite3* db) const {
  sqlite3_close_v2(db);
}

SqliteJobStore::SqliteJobStore(std::string path, DbPtr db)
    : path_(std::move(path)),
      db_(std::move(db)),
      statements_(std::make_unique<SqliteStatementCache>(db_.get())) {}

SqliteJobStore::~SqliteJobStore() = default;

StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(
    const std::string& path, SqliteJobStoreOptions options) {
  TERN_RETURN_IF_ERROR(options.Validate());
  const std::string context = "job store " + path;
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
      nullptr);
  DbPtr db(raw);  // sqlite3_open_v2 allocates a handle even when it fails
  TERN_RETURN_IF_ERROR(
      SqliteStatus(db.get(), rc, "sqlite3_open_v2", __FILE__, __LINE__)
          .WithContext(context));
  Status setup = [&]() -> Status {
    TERN_SQLITE_CHECK(db.get(), sqlite3_extended_result_codes(db.get(), 1));
    TERN_SQLITE_CHECK(
        db.get(),
        sqlite3_busy_timeout(db.get(),
                             static_cast<int>(options.busy_timeout.count())));
    return OkStatus();
  }();
  TERN_RETURN_IF_ERROR(setup.WithContext(context));
  std::unique_ptr<SqliteJobStore> store(
      new SqliteJobStore(path, std::move(db)));
  TERN_RETURN_IF_ERROR(store->EnsureSchema().WithContext(context));
  return store;
}

Status SqliteJobStore::EnsureSchema() {
  std::lock_guard<std::mutex> lock(mu_);
  sqlite3* db = db_.get();
  // The first statement that reads the file: a non-SQLite file fails here.
  {
    TERN_ASSIGN_OR_RETURN(Statement wal,
                          Statement::Prepare(db, "PRAGMA journal_mode = WAL"));
    TERN_ASSIGN_OR_RETURN(bool row, wal.Step());
    std::string mode = row ? wal.Text(0) : "";
    if (mode != "wal") {
      return FailedPreconditionError("journal_mode=WAL refused (mode is \"" +
                                     mode + "\")");
    }
  }
  TERN_RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous = FULL"));

  TERN_ASSIGN_OR_RETURN(Statement version_stmt,
                        Statement::Prepare(db, "PRAGMA user_version"));
  TERN_ASSIGN_OR_RETURN(bool has_version, version_stmt.Step());
  const int64_t version = has_version ? version_stmt.Int(0) : 0;
  if (version == kSchemaVersion) return OkStatus();
  auto newer = [](int64_t v) {
    return FailedPreconditionError("schema version " + std::to_string(v) +
                                   " is newer than this binary's " +
                                   std::to_string(kSchemaVersion) + "; run a newer ternd");
  };
  if (version > kSchemaVersion) return newer(version);
  if (version < 0) {
    return FailedPreconditionError("schema version " + std::to_string(version) +
                                   ": not a tern job store");
  }
  return InTransaction(db, [&]() -> Status {
    // Another process may have created or migrated the schema while we waited.
    TERN_ASSIGN_OR_RETURN(Statement again,
                          Statement::Prepare(db, "PRAGMA user_version"));
    TERN_ASSIGN_OR_RETURN(bool has_row, again.Step());
    int64_t current = has_row ? again.Int(0) : 0;
    if (current == kSchemaVersion) return OkStatus();
    if (current > kSchemaVersion) return newer(current);
    if (current == 0) {
      TERN_ASSIGN_OR_RETURN(Statement count,
                            Statement::Prepare(db, "SELECT count(*) FROM sqlite_master"));
      TERN_ASSIGN_OR_RETURN(bool row, count.Step());
      if (row && count.Int(0) != 0) {
        return FailedPreconditionError("an SQLite database with user_version 0 and " +
                                       std::to_string(count.Int(0)) +
                                       " schema objects: not a tern job store");
      }
      for (const char* sql : kSchemaV1) TERN_RETURN_IF_ERROR(Exec(db, sql));
      current = 1;
    } else {
      TERN_LOG(INFO) << "job store: migrating schema version " << current << " to "
                     << kSchemaVersion;
    }
    for (; current < kSchemaVersion; ++current) {
      const Migration& m = kMigrations[current - 1];
      for (size_t i = 0; i < m.count; ++i) {
        TERN_RETURN_IF_ERROR(
            Exec(db, m.statements[i])
                .WithContext("migration to schema version " + std::to_string(current + 1)));
      }
    }
    return Exec(db, ("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str());
  });
}

Status SqliteJobStore::CreateJob(const Job& job,
                                 const std::vector<JobEvent>& events) {
  std::lock_guard<std::mutex> lock(mu_);
  SqliteStatementCache& c = *statements_;
  return InTransaction(c, [&] { return InsertJobRows(c, job, events); });
}

Status SqliteJobStore::UpdateJob(const Job& job,
                                 const std::vector<JobEvent>& events) {
  std::lock_guard<std::mutex> lock(mu_);
  SqliteStatementCache& c = *statements_;
  return InTransaction(c, [&] { return UpdateJobRows(c, job, events); });
}

Status SqliteJobStore::Commit(const std::vector<JobWrite>& writes) {
  if (writes.empty()) return OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  SqliteStatementCache& c = *statements_;
  return InTransaction(c, [&]() -> Status {
    for (const JobWrite& w : writes) {
      TERN_RETURN_IF_ERROR(WriteJobRows(c, w));
    }
    return OkStatus();
  });
}

StatusOr<JobId> SqliteJobStore::HighestJobIdEver() {
  std::lock_guard<std::mutex> lock(mu_);
  TERN_ASSIGN_OR_RETURN(Statement sel,
                        Statement::Prepare(db_.get(),
                                           "SELECT max(coalesce((SELECT max(id) FROM jobs), 0), "
                                           "coalesce((SELECT value FROM store_counters "
                                           "WHERE name = 'highest_deleted_job_id'), 0))"));
  TERN_ASSIGN_OR_RETURN(bool row, sel.Step());
  if (!row) return InternalError("job store: no answer for the highest job id");
  return static_cast<JobId>(sel.Int(0));
}

StatusOr<std::vector<Job>> SqliteJobStore::LoadJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  sqlite3* db = db_.get();
  std::vector<Job> jobs;
  std::map<JobId, size_t> index;
  TERN_ASSIGN_OR_RETURN(
      Statement sel,
      Statement::Prepare(db,
                         "SELECT id, owner, priority, world_size, device_kind, max_restarts, "
                         "idempotency_key, spec, submit_time_us, state, restarts_used, "
                         "attempt, last_checkpoint_step, artifact_path, metrics_json, "
                         "last_event_seq, rendezvous_host, rendezvous_port, "
                         "restart_not_before_us, failure_attempt, failure_rank, failure_agent_id, "
                         "failure_exit_code, failure_signal, failure_trainer_code, failure_reason, "
                         "failure_message, failure_time_us FROM jobs ORDER BY id"));
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, sel.Step());
    if (!row) break;
    Job job;
    job.id = sel.Int(0);
    job.owner = sel.Text(1);
    job.priority = static_cast<int>(sel.Int(2));
    job.world_size = static_cast<int>(sel.Int(3));
    job.device_kind = sel.Text(4);
    job.max_restarts = static_cast<int>(sel.Int(5));
    job.idempotency_key = sel.Text(6);
    job.spec = sel.Text(7);
    job.submit_time = FromUnixMicros(sel.Int(8));
    StatusOr<JobState> state = ParseJobState(sel.Text(9));
    if (!state.ok()) return Corrupt(state.status(), job.id);
    job.state = *state;
    job.restarts_used = static_cast<int>(sel.Int(10));
    job.attempt = static_cast<int>(sel.Int(11));
    if (!sel.IsNull(12)) job.last_checkpoint_step = sel.Int(12);
    job.artifact_path = sel.Text(13);
    job.metrics_json = sel.Text(14);
    job.last_event_seq = sel.Int(15);
    job.rendezvous_host = sel.Text(16);
    job.rendezvous_port = static_cast<int>(sel.Int(17));
    job.restart_not_before = FromUnixMicros(sel.Int(18));
    if (sel.Int(19) > 0) {
      RankFailure f;
      f.attempt = static_cast<int>(sel.Int(19));
      f.rank = static_cast<int>(sel.Int(20));
      f.agent_id = sel.Text(21);
      f.exit_code = static_cast<int>(sel.Int(22));
      f.signal = static_cast<int>(sel.Int(23));
      f.trainer_code = sel.Text(24);
      f.reason = sel.Text(25);
      f.message = sel.Text(26);
      f.time = FromUnixMicros(sel.Int(27));
      job.last_failure = std::move(f);
    }
    index[job.id] = jobs.size();
    jobs.push_back(std::move(job));
  }

  auto find = [&](JobId id) -> StatusOr<Job*> {
    auto it = index.find(id);
    if (it == index.end()) {
      return DataLossError("job store row refers to missing job " +
                           std::to_string(id));
    }
    return &jobs[it->second];
  };

  TERN_ASSIGN_OR_RETURN(
      Statement labels,
      Statement::Prepare(db, "SELECT job_id, key, value FROM job_labels"));
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, labels.Step());
    if (!row) break;
    TERN_ASSIGN_OR_RETURN(Job * job, find(labels.Int(0)));
    job->labels[labels.Text(1)] = labels.Text(2);
  }

  TERN_ASSIGN_OR_RETURN(
      Statement ranks,
      Statement::Prepare(db,
                         "SELECT job_id, rank, agent_id, state, exit_code "
                         "FROM job_ranks ORDER BY job_id, rank"));
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, ranks.Step());
    if (!row) break;
    TERN_ASSIGN_OR_RETURN(Job * job, find(ranks.Int(0)));
    RankPlacement r;
    r.rank = static_cast<int>(ranks.Int(1));
    r.agent_id = ranks.Text(2);
    StatusOr<RankState> state = ParseRankState(ranks.Text(3));
    if (!state.ok()) return Corrupt(state.status(), job->id);
    r.state = *state;
    r.exit_code = static_cast<int>(ranks.Int(4));
    job->ranks.push_back(std::move(r));
  }

  TERN_ASSIGN_OR_RETURN(
      Statement events,
      Statement::Prepare(db, (std::string("SELECT job_id, ") + kEventColumns +
                              " FROM job_events WHERE type = 'STATE_CHANGED' "
                              "ORDER BY job_id, seq")
                                 .c_str()));
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, events.Step());
    if (!row) break;
    TERN_ASSIGN_OR_RETURN(Job * job, find(events.Int(0)));
    StatusOr<JobEvent> event = ReadEventRow(events, 1);
    if (!event.ok()) return Corrupt(event.status(), job->id);
    job->history.push_back(std::move(event).value());
  }
  return jobs;
}

StatusOr<std::vector<JobEvent>> SqliteJobStore::ReadEvents(JobId job,
                                                           int64_t after_seq,
                                                           int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  TERN_ASSIGN_OR_RETURN(
      Statement sel,
      Statement::Prepare(db_.get(),
                         (std::string("SELECT ") + kEventColumns +
                          " FROM job_events WHERE job_id = ? AND seq > ? "
                          "ORDER BY seq LIMIT ?")
                             .c_str()));
  TERN_RETURN_IF_ERROR(sel.BindAll(job, after_seq, limit));
  std::vector<JobEvent> events;
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool row, sel.Step());
    if (!row) break;
    StatusOr<JobEvent> event = ReadEventRow(sel, 0);
    if (!event.ok()) return Corrupt(event.status(), job);
    events.push_back(std::move(event).value());
  }
  return events;
}

}  // namespace tern::scheduler
