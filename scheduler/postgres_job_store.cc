#include "scheduler/postgres_job_store.h"

#include <map>
#include <optional>
#include <utility>

#include "common/error_reasons.h"
#include "scheduler/postgres_connection.h"

namespace tern::scheduler {
namespace {

using pg::Params;
using pg::Result;
using pg::Step;

Status NotInStore(JobId id) {
  return NotFoundError("job " + std::to_string(id) + " is not in the job store");
}

// A step's check: exactly one row changed, else NOT_FOUND for job `id`.
std::function<Status(const Result&)> ChangesOneRow(JobId id) {
  return [id](const Result& r) { return r.affected() == 1 ? OkStatus() : NotInStore(id); };
}

// Job::last_failure as the failure_* columns' values (failure_attempt 0: none).
void AddFailure(const std::optional<RankFailure>& f, Params& p) {
  if (!f) {
    p.Int(0).Int(0).Text("").Int(0).Int(0).Text("").Text("").Text("").Int(0);
    return;
  }
  p.Int(f->attempt)
      .Int(f->rank)
      .Text(f->agent_id)
      .Int(f->exit_code)
      .Int(f->signal)
      .Text(f->trainer_code)
      .Text(f->reason)
      .Text(f->message)
      .Int(ToUnixMicros(f->time));
}

// The columns a kUpdate rewrites, in the order both statements below list
// them: state through restart_not_before_us, then the failure_* columns.
void AddMutableColumns(const Job& job, Params& p) {
  p.Text(JobStateName(job.state))
      .Int(job.restarts_used)
      .Int(job.attempt)
      .OptionalInt(job.last_checkpoint_step)
      .Text(job.artifact_path)
      .Text(job.metrics_json)
      .Int(job.last_event_seq)
      .Text(job.rendezvous_host)
      .Int(job.rendezvous_port)
      .Int(ToUnixMicros(job.restart_not_before));
  AddFailure(job.last_failure, p);
}

void AddLabels(const Job& job, std::vector<Step>& steps) {
  for (const auto& [key, value] : job.labels) {
    steps.push_back({"INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)",
                     Params().Int(job.id).Text(key).Text(value), nullptr});
  }
}

void AddRanks(const Job& job, std::vector<Step>& steps) {
  steps.push_back({"DELETE FROM job_ranks WHERE job_id = $1", Params().Int(job.id), nullptr});
  for (const RankPlacement& r : job.ranks) {
    steps.push_back(
        {"INSERT INTO job_ranks (job_id, rank, agent_id, state, exit_code) "
         "VALUES ($1, $2, $3, $4, $5)",
         Params()
             .Int(job.id)
             .Int(r.rank)
             .Text(r.agent_id)
             .Text(RankStateName(r.state))
             .Int(r.exit_code),
         nullptr});
  }
}

void AddEvents(JobId id, const std::vector<JobEvent>& events, std::vector<Step>& steps) {
  for (const JobEvent& e : events) {
    steps.push_back(
        {"INSERT INTO job_events (job_id, seq, time_us, type, from_state, to_state, "
         "reason, message, payload, step) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
         Params()
             .Int(id)
             .Int(e.seq)
             .Int(ToUnixMicros(e.time))
             .Text(JobEventTypeName(e.type))
             .Text(JobStateName(e.from))
             .Text(JobStateName(e.to))
             .Text(e.reason)
             .Text(e.message)
             .Text(e.payload)
             .Int(e.step),
         nullptr});
  }
}

// The statements of one write, as SqliteJobStore's WriteJobRows runs them.
void AddWrite(const JobWrite& w, std::vector<Step>& steps) {
  const Job& job = w.job;
  switch (w.kind) {
    case JobWrite::Kind::kCreate: {
      Params p;
      p.Int(job.id)
          .Text(job.owner)
          .Int(job.priority)
          .Int(job.world_size)
          .Text(job.device_kind)
          .Int(job.max_restarts)
          .Text(job.idempotency_key)
          .Bytes(job.spec)
          .Int(ToUnixMicros(job.submit_time));
      AddMutableColumns(job, p);
      steps.push_back(
          {"INSERT INTO jobs (id, owner, priority, world_size, device_kind, "
           "max_restarts, idempotency_key, spec, submit_time_us, state, "
           "restarts_used, attempt, last_checkpoint_step, artifact_path, "
           "metrics_json, last_event_seq, rendezvous_host, rendezvous_port, "
           "restart_not_before_us, failure_attempt, failure_rank, "
           "failure_agent_id, failure_exit_code, failure_signal, "
           "failure_trainer_code, failure_reason, failure_message, "
           "failure_time_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
           "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, "
           "$25, $26, $27, $28)",
           std::move(p), nullptr});
      AddLabels(job, steps);
      AddRanks(job, steps);
      AddEvents(job.id, w.events, steps);
      return;
    }
    case JobWrite::Kind::kUpdate: {
      Params p;
      AddMutableColumns(job, p);
      p.Int(job.id);
      steps.push_back(
          {"UPDATE jobs SET state = $1, restarts_used = $2, attempt = $3, "
           "last_checkpoint_step = $4, artifact_path = $5, metrics_json = $6, "
           "last_event_seq = $7, rendezvous_host = $8, rendezvous_port = $9, "
           "restart_not_before_us = $10, failure_attempt = $11, failure_rank = $12, "
           "failure_agent_id = $13, failure_exit_code = $14, failure_signal = $15, "
           "failure_trainer_code = $16, failure_reason = $17, "
           "failure_message = $18, failure_time_us = $19 WHERE id = $20",
           std::move(p), ChangesOneRow(job.id)});
      AddRanks(job, steps);
      AddEvents(job.id, w.events, steps);
      return;
    }
    case JobWrite::Kind::kRelabel:
      steps.push_back({"UPDATE jobs SET spec = $1 WHERE id = $2",
                       Params().Bytes(job.spec).Int(job.id), ChangesOneRow(job.id)});
      steps.push_back({"DELETE FROM job_labels WHERE job_id = $1", Params().Int(job.id), nullptr});
      AddLabels(job, steps);
      return;
    case JobWrite::Kind::kDelete:
      for (const char* sql :
           {"DELETE FROM job_events WHERE job_id = $1", "DELETE FROM job_ranks WHERE job_id = $1",
            "DELETE FROM job_labels WHERE job_id = $1"}) {
        steps.push_back({sql, Params().Int(job.id), nullptr});
      }
      steps.push_back(
          {"DELETE FROM jobs WHERE id = $1", Params().Int(job.id), ChangesOneRow(job.id)});
      // Its id stays taken (HighestJobIdEver), also when it was the newest.
      steps.push_back(
          {"INSERT INTO store_counters (name, value) "
           "VALUES ('highest_deleted_job_id', $1) ON CONFLICT (name) "
           "DO UPDATE SET value = greatest(store_counters.value, excluded.value)",
           Params().Int(job.id), nullptr});
      return;
  }
}

constexpr char kEventColumns[] =
    "seq, time_us, type, from_state, to_state, reason, message, payload, step";

// Reads kEventColumns of `row` starting at column `c`.
StatusOr<JobEvent> ReadEventRow(const Result& r, int row, int c) {
  JobEvent e;
  e.seq = r.Int(row, c + 0);
  e.time = FromUnixMicros(r.Int(row, c + 1));
  TERN_ASSIGN_OR_RETURN(e.type, ParseJobEventType(r.Text(row, c + 2)));
  TERN_ASSIGN_OR_RETURN(e.from, ParseJobState(r.Text(row, c + 3)));
  TERN_ASSIGN_OR_RETURN(e.to, ParseJobState(r.Text(row, c + 4)));
  e.reason = r.Text(row, c + 5);
  e.message = r.Text(row, c + 6);
  e.payload = r.Text(row, c + 7);
  e.step = r.Int(row, c + 8);
  return e;
}

Status Corrupt(const Status& status, JobId id) {
  return DataLossError("job store row of job " + std::to_string(id) + ": " + status.message());
}

}  // namespace

bool IsPostgresUrl(std::string_view db) {
  return db.rfind("postgresql://", 0) == 0 || db.rfind("postgres://", 0) == 0;
}

PostgresJobStore::PostgresJobStore(std::unique_ptr<pg::Connection> connection, Options options)
    : options_(std::move(options)), connection_(std::move(connection)) {}

PostgresJobStore::~PostgresJobStore() = default;

StatusOr<std::unique_ptr<PostgresJobStore>> PostgresJobStore::Open(const std::string& url,
                                                                   const Options& options) {
  if (options.fence_epoch < 0) return InvalidArgumentError("fence_epoch: must be >= 0");
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<pg::Connection> connection, pg::Connection::Open(url));
  return std::unique_ptr<PostgresJobStore>(new PostgresJobStore(std::move(connection), options));
}

Status PostgresJobStore::CreateJob(const Job& job, const std::vector<JobEvent>& events) {
  return Commit({JobWrite{JobWrite::Kind::kCreate, job, events}});
}

Status PostgresJobStore::UpdateJob(const Job& job, const std::vector<JobEvent>& events) {
  return Commit({JobWrite{JobWrite::Kind::kUpdate, job, events}});
}

Status PostgresJobStore::Commit(const std::vector<JobWrite>& writes) {
  if (writes.empty()) return OkStatus();
  const int64_t fence = options_.fence_epoch;
  auto lost = [fence](const std::string& epoch) {
    return AbortedError("leadership lost: this ternd's store was opened with epoch " +
                        std::to_string(fence) + " and epoch " + epoch +
                        " exists; nothing was written")
        .WithReason(error_reason::kLeadershipLost);
  };
  Status status;
  if (fenced_) {
    status = lost("a later");
  } else {
    std::vector<Step> steps;
    if (fence > 0) {
      steps.push_back(
          {"SELECT epoch FROM leader_lease FOR SHARE", Params(), [&](const Result& r) -> Status {
             const int64_t epoch = r.rows() == 1 ? r.Int(0, 0) : 0;
             return epoch == fence ? OkStatus() : lost(std::to_string(epoch));
           }});
    }
    for (const JobWrite& w : writes) AddWrite(w, steps);
    std::lock_guard<std::mutex> lock(mu_);
    status = connection_->Transaction(steps);
  }
  if (status.reason() == error_reason::kLeadershipLost && !fenced_.exchange(true) &&
      options_.on_fenced) {
    options_.on_fenced();
  }
  return status;
}

StatusOr<JobId> PostgresJobStore::HighestJobIdEver() {
  std::lock_guard<std::mutex> lock(mu_);
  TERN_ASSIGN_OR_RETURN(
      Result r, connection_->Exec("SELECT greatest(coalesce((SELECT max(id) FROM jobs), 0), "
                                  "coalesce((SELECT value FROM store_counters "
                                  "WHERE name = 'highest_deleted_job_id'), 0))"));
  if (r.rows() != 1) return InternalError("job store: no answer for the highest job id");
  return static_cast<JobId>(r.Int(0, 0));
}

StatusOr<std::vector<Job>> PostgresJobStore::LoadJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  pg::Connection& c = *connection_;
  // One snapshot for the four reads.
  TERN_RETURN_IF_ERROR(c.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").status());
  StatusOr<std::vector<Job>> jobs = [&]() -> StatusOr<std::vector<Job>> {
    TERN_ASSIGN_OR_RETURN(
        Result sel,
        c.Exec("SELECT id, owner, priority, world_size, device_kind, max_restarts, "
               "idempotency_key, spec, submit_time_us, state, restarts_used, attempt, "
               "last_checkpoint_step, artifact_path, metrics_json, last_event_seq, "
               "rendezvous_host, rendezvous_port, restart_not_before_us, failure_attempt, "
               "failure_rank, failure_agent_id, failure_exit_code, failure_signal, "
               "failure_trainer_code, failure_reason, failure_message, failure_time_us "
               "FROM jobs ORDER BY id"));
    std::vector<Job> out;
    std::map<JobId, size_t> index;
    for (int i = 0; i < sel.rows(); ++i) {
      Job job;
      job.id = sel.Int(i, 0);
      job.owner = sel.Text(i, 1);
      job.priority = static_cast<int>(sel.Int(i, 2));
      job.world_size = static_cast<int>(sel.Int(i, 3));
      job.device_kind = sel.Text(i, 4);
      job.max_restarts = static_cast<int>(sel.Int(i, 5));
      job.idempotency_key = sel.Text(i, 6);
      job.spec = sel.Bytes(i, 7);
      job.submit_time = FromUnixMicros(sel.Int(i, 8));
      StatusOr<JobState> state = ParseJobState(sel.Text(i, 9));
      if (!state.ok()) return Corrupt(state.status(), job.id);
      job.state = *state;
      job.restarts_used = static_cast<int>(sel.Int(i, 10));
      job.attempt = static_cast<int>(sel.Int(i, 11));
      if (!sel.IsNull(i, 12)) job.last_checkpoint_step = sel.Int(i, 12);
      job.artifact_path = sel.Text(i, 13);
      job.metrics_json = sel.Text(i, 14);
      job.last_event_seq = sel.Int(i, 15);
      job.rendezvous_host = sel.Text(i, 16);
      job.rendezvous_port = static_cast<int>(sel.Int(i, 17));
      job.restart_not_before = FromUnixMicros(sel.Int(i, 18));
      if (sel.Int(i, 19) > 0) {
        RankFailure f;
        f.attempt = static_cast<int>(sel.Int(i, 19));
        f.rank = static_cast<int>(sel.Int(i, 20));
        f.agent_id = sel.Text(i, 21);
        f.exit_code = static_cast<int>(sel.Int(i, 22));
        f.signal = static_cast<int>(sel.Int(i, 23));
        f.trainer_code = sel.Text(i, 24);
        f.reason = sel.Text(i, 25);
        f.message = sel.Text(i, 26);
        f.time = FromUnixMicros(sel.Int(i, 27));
        job.last_failure = std::move(f);
      }
      index[job.id] = out.size();
      out.push_back(std::move(job));
    }
    auto find = [&](JobId id) -> StatusOr<Job*> {
      auto it = index.find(id);
      if (it == index.end()) {
        return DataLossError("job store row refers to missing job " + std::to_string(id));
      }
      return &out[it->second];
    };

    TERN_ASSIGN_OR_RETURN(Result labels,
                          c.Exec("SELECT job_id, key, value FROM job_labels ORDER BY job_id"));
    for (int i = 0; i < labels.rows(); ++i) {
      TERN_ASSIGN_OR_RETURN(Job * job, find(labels.Int(i, 0)));
      job->labels[labels.Text(i, 1)] = labels.Text(i, 2);
    }
    TERN_ASSIGN_OR_RETURN(Result ranks, c.Exec("SELECT job_id, rank, agent_id, state, exit_code "
                                               "FROM job_ranks ORDER BY job_id, rank"));
    for (int i = 0; i < ranks.rows(); ++i) {
      TERN_ASSIGN_OR_RETURN(Job * job, find(ranks.Int(i, 0)));
      RankPlacement r;
      r.rank = static_cast<int>(ranks.Int(i, 1));
      r.agent_id = ranks.Text(i, 2);
      StatusOr<RankState> state = ParseRankState(ranks.Text(i, 3));
      if (!state.ok()) return Corrupt(state.status(), job->id);
      r.state = *state;
      r.exit_code = static_cast<int>(ranks.Int(i, 4));
      job->ranks.push_back(std::move(r));
    }
    const std::string events_sql = std::string("SELECT job_id, ") + kEventColumns +
                                   " FROM job_events WHERE type = 'STATE_CHANGED' "
                                   "ORDER BY job_id, seq";
    TERN_ASSIGN_OR_RETURN(Result events, c.Exec(events_sql.c_str()));
    for (int i = 0; i < events.rows(); ++i) {
      TERN_ASSIGN_OR_RETURN(Job * job, find(events.Int(i, 0)));
      StatusOr<JobEvent> event = ReadEventRow(events, i, 1);
      if (!event.ok()) return Corrupt(event.status(), job->id);
      job->history.push_back(std::move(event).value());
    }
    return out;
  }();
  // Read-only: ending it cannot lose anything. A lost connection already
  // made `jobs` an error.
  StatusOr<Result> end = c.Exec("COMMIT");
  if (jobs.ok() && !end.ok()) return end.status();
  return jobs;
}

StatusOr<std::vector<JobEvent>> PostgresJobStore::ReadEvents(JobId job, int64_t after_seq,
                                                             int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sql = std::string("SELECT ") + kEventColumns +
                          " FROM job_events WHERE job_id = $1 AND seq > $2 "
                          "ORDER BY seq LIMIT $3";
  // A negative limit: all of them (as SQLite's LIMIT -1; PostgreSQL's LIMIT NULL).
  std::optional<int64_t> max_rows;
  if (limit >= 0) max_rows = limit;
  TERN_ASSIGN_OR_RETURN(
      Result r,
      connection_->Exec(sql.c_str(), Params().Int(job).Int(after_seq).OptionalInt(max_rows)));
  std::vector<JobEvent> events;
  for (int i = 0; i < r.rows(); ++i) {
    StatusOr<JobEvent> event = ReadEventRow(r, i, 0);
    if (!event.ok()) return Corrupt(event.status(), job);
    events.push_back(std::move(event).value());
  }
  return events;
}

}  // namespace tern::scheduler
