#include "cli/ternctl.h"

#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "auth/bearer_token.h"
#include "auth/tls_credentials.h"
#include "auth/tls_flags.h"
#include "cli/export.h"
#include "cli/inspect.h"
#include "cli/job_file.h"
#include "cli/render.h"
#include "common/atomic_file.h"
#include "common/error_reasons.h"
#include "common/sha256.h"
#include "common/utf8.h"
#include "failover/server_list.h"
#include "tern/v1/job_service.grpc.pb.h"
#include "tern/v1/service_config.h"

namespace tern::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Deadline = std::chrono::system_clock::time_point;  // gRPC deadlines
using std::chrono::milliseconds;

// Whether a failed call's tern.v1 ErrorInfo has `reason`.
bool IsReason(const grpc::Status& status, const char* reason) {
  const std::optional<google::rpc::ErrorInfo> info = failover::TernErrorInfoOf(status);
  return info && info->reason() == reason;
}

constexpr const char* kExitCodesHelp =
    "Exit codes:\n"
    "  0  ok\n"
    "  1  the watched job ended FAILED or CANCELLED\n"
    "  2  usage error, bad job file, or INVALID_ARGUMENT from the server\n"
    "  3  NOT_FOUND (no such job)\n"
    "  4  server unavailable or deadline exceeded (safe to retry)\n"
    "  5  any other error (e.g. FAILED_PRECONDITION, corrupted download)\n"
    "Environment: TERN_SERVER (--server), TERN_OWNER (--owner), TERN_TLS (--tls),\n"
    "TERN_TLS_CA, TERN_TLS_CERT, TERN_TLS_KEY (--tls-ca, --tls-cert, --tls-key).";

constexpr auto kFetchDeadline = std::chrono::minutes(30);
constexpr int kSubmitAttempts = 5;
constexpr int kMaxFetchResumes = 3;

struct Globals {
  std::string server = "127.0.0.1:7070";
  tls::ClientTlsOptions tls;
  std::string owner;
  bool json = false;
  double timeout_s = 10.0;
};

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

std::string RandomKey() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd());
  char buf[48];
  std::snprintf(buf, sizeof buf, "ternctl-%016llx%016llx",
                static_cast<unsigned long long>(gen()), static_cast<unsigned long long>(gen()));
  return buf;
}

// "KEY=VALUE" (the value may hold '=' and be empty); INVALID_ARGUMENT
// naming --label otherwise.
StatusOr<std::pair<std::string, std::string>> ParseLabel(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgumentError("--label: expected KEY=VALUE, got " + Quoted(text));
  }
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

bool Retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// What `ternctl` commands share: the channel, deadlines, output and errors.
class Client {
 public:
  // `servers`: every --server address; calls go to the leader among them.
  Client(const Globals& g, std::shared_ptr<failover::ServerList> servers, std::ostream& out,
         std::ostream& err, bool tty)
      : g_(g), out_(out), err_(err), tty_(tty), servers_(std::move(servers)) {
    for (size_t i = 0; i < servers_->size(); ++i) {
      stubs_.push_back(v1::JobService::NewStub(servers_->channel(i)));
    }
  }

  int Submit(const std::string& file, const SpecOverrides& overrides, std::string key,
             bool watch);
  int List(const std::vector<std::string>& states, const std::vector<std::string>& labels,
           const std::string& owner, int limit, const std::string& page_token);
  int Get(const std::string& id);
  int Watch(const std::string& id, uint64_t from, bool include_logs, double reconnect_for_s);
  int Cancel(const std::string& id, const std::string& reason);
  int Logs(const std::string& id, bool follow);
  int Fetch(const std::string& id, const std::string& output);
  int WhoAmI();
  int Agents();
  // Sets the job's name (when `name` is set) and merges `set_labels`
  // (KEY=VALUE) into its labels after dropping `remove_labels` (keys).
  int Update(const std::string& id, const std::optional<std::string>& name,
             const std::vector<std::string>& set_labels,
             const std::vector<std::string>& remove_labels);
  int Delete(const std::string& id);

 private:
  // Owner metadata, and a deadline unless `deadline` is zero.
  void Prepare(grpc::ClientContext* ctx, milliseconds deadline) const {
    if (!g_.owner.empty()) ctx->AddMetadata("x-tern-owner", g_.owner);
    if (deadline.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  }
  // A unary call on the leader: on NOT_LEADER or an unreachable ternd it is
  // tried again on the next one of --server's addresses (failover/
  // server_list.h), every try within `deadline`.
  template <typename Request, typename Response>
  grpc::Status Unary(grpc::Status (v1::JobService::Stub::*method)(grpc::ClientContext*,
                                                                  const Request&, Response*),
                     const Request& request, Response* response, Deadline deadline) {
    return servers_->Run(deadline, [&](const failover::ServerList::Target& target) {
      grpc::ClientContext ctx;
      Prepare(&ctx, milliseconds(0));
      ctx.set_deadline(deadline);
      return (stubs_[target.index].get()->*method)(&ctx, request, response);
    });
  }
  milliseconds Timeout() const {
    return milliseconds(static_cast<int64_t>(g_.timeout_s * 1000.0));
  }
  // --timeout from now: a call and its retries end by it (a retry never
  // gets a fresh --timeout of its own).
  Deadline CommandDeadline() const { return std::chrono::system_clock::now() + Timeout(); }
  int Fail(const grpc::Status& s, const std::string& what) const {
    err_ << "ternctl: " << what << ": " << StatusCodeName(static_cast<StatusCode>(s.error_code()))
         << ": " << s.error_message() << "\n"
         << FormatErrorDetails(s.error_details());
    return ExitCodeFor(static_cast<StatusCode>(s.error_code()));
  }
  int Fail(const Status& s, const std::string& what) const {
    err_ << "ternctl: " << what << ": " << s.ToString() << "\n";
    return ExitCodeFor(s.code());
  }
  // A unary call whose response is printed as JSON (--json) or by `format`.
  template <typename Request, typename Response, typename Format>
  int Show(const std::string& what,
           grpc::Status (v1::JobService::Stub::*method)(grpc::ClientContext*, const Request&,
                                                        Response*),
           const Request& request, Format format) {
    Response response;
    const grpc::Status status = Unary(method, request, &response, CommandDeadline());
    if (!status.ok()) return Fail(status, what);
    out_ << (g_.json ? ToJson(response) + "\n" : format(response));
    return kExitOk;
  }
  // Streams `id`'s events from `from` through `on_event`; `history_only`:
  // only those recorded before the call (WatchJobRequest.history_only).
  // Returns the stream's status; `last_seq` is the last sequence seen.
  grpc::Status StreamEvents(const std::string& id, uint64_t from, bool include_logs,
                            bool history_only, uint64_t* last_seq,
                            const std::function<void(const v1::JobEvent&)>& on_event);
  grpc::Status GetJob(const std::string& id, v1::Job* job, Deadline deadline) {
    v1::GetJobRequest request;
    request.set_job_id(id);
    request.set_view(v1::JOB_VIEW_FULL);  // `get` shows the per-layer statistics
    return Unary(&v1::JobService::Stub::GetJob, request, job, deadline);
  }
  int DownloadTo(const std::string& id, const std::string& output);

  const Globals g_;
  std::ostream& out_;
  std::ostream& err_;
  const bool tty_;
  std::shared_ptr<failover::ServerList> servers_;
  std::vector<std::unique_ptr<v1::JobService::Stub>> stubs_;  // one per address
};

int Client::Submit(const std::string& file, const SpecOverrides& overrides, std::string key,
                   bool watch) {
  // A job file that cannot be read or parsed is a usage error (exit 2).
  StatusOr<v1::JobSpec> spec = LoadJobSpec(file);
  if (!spec.ok()) {
    Fail(spec.status(), "submit");
    return kExitUsage;
  }
  if (Status s = ApplyOverrides(overrides, &spec.value()); !s.ok()) return Fail(s, "submit");
  // A key makes retries safe (the channel's retry policy and the loop below):
  // the server returns the same job. The loop retries an unreachable or
  // restarting ternd a few times with growing pauses, all within one
  // --timeout: a server that accepts the call but never answers costs one
  // --timeout, not one per attempt.
  if (key.empty()) {
    key = RandomKey();
    err_ << "ternctl: idempotency key " << key << "\n";
  }
  v1::SubmitJobRequest request;
  *request.mutable_spec() = *spec;
  request.set_idempotency_key(key);
  v1::SubmitJobResponse response;
  grpc::Status status;
  const Deadline deadline = CommandDeadline();
  milliseconds pause(250);
  for (int attempt = 1;; ++attempt, pause *= 2) {
    status = Unary(&v1::JobService::Stub::SubmitJob, request, &response, deadline);
    if (!Retryable(status) || attempt == kSubmitAttempts ||
        std::chrono::system_clock::now() + pause >= deadline) {
      break;
    }
    std::this_thread::sleep_for(pause);
  }
  if (!status.ok()) return Fail(status, "submit");
  if (g_.json) {
    out_ << ToJson(response) << "\n";
  } else {
    out_ << response.job().id() << "\n";
    if (!response.created()) {
      err_ << "ternctl: idempotency key " << key << " was used before; this is the earlier job\n";
    }
  }
  out_.flush();
  return watch ? Watch(response.job().id(), 0, false, 60) : kExitOk;
}

int Client::List(const std::vector<std::string>& states, const std::vector<std::string>& labels,
                 const std::string& owner, int limit, const std::string& page_token) {
  v1::ListJobsRequest request;
  for (const std::string& s : states) {
    StatusOr<int> state = ParseEnumValue(*v1::JobState_descriptor(), s);
    if (!state.ok()) return Fail(InvalidArgumentError("--state: " + state.status().message()), "list");
    request.add_states(static_cast<v1::JobState>(*state));
  }
  for (const std::string& l : labels) {
    StatusOr<std::pair<std::string, std::string>> label = ParseLabel(l);
    if (!label.ok()) return Fail(label.status(), "list");
    (*request.mutable_labels())[label->first] = label->second;
  }
  request.set_owner(owner);
  request.set_page_token(page_token);
  v1::ListJobsResponse all;
  while (true) {
    const int remaining = limit > 0 ? limit - all.jobs_size() : 500;
    request.set_page_size(std::min(remaining, 500));
    v1::ListJobsResponse page;
    const grpc::Status status =
        Unary(&v1::JobService::Stub::ListJobs, request, &page, CommandDeadline());
    if (!status.ok()) return Fail(status, "list");
    for (v1::Job& j : *page.mutable_jobs()) {
      if (limit > 0 && all.jobs_size() >= limit) break;
      *all.add_jobs() = std::move(j);
    }
    all.set_next_page_token(page.next_page_token());
    if (page.next_page_token().empty() || (limit > 0 && all.jobs_size() >= limit)) break;
    request.set_page_token(page.next_page_token());
  }
  if (g_.json) {
    out_ << ToJson(all) << "\n";
  } else {
    out_ << FormatJobTable({all.jobs().begin(), all.jobs().end()});
    if (!all.next_page_token().empty()) {
      err_ << "(more jobs: --limit 0 for all, or --page-token " << all.next_page_token() << ")\n";
    }
  }
  return kExitOk;
}

int Client::Get(const std::string& id) {
  v1::Job job;
  const grpc::Status status = GetJob(id, &job, CommandDeadline());
  if (!status.ok()) return Fail(status, "get " + id);
  out_ << (g_.json ? ToJson(job) + "\n" : FormatJobDetails(job));
  return kExitOk;
}

int Client::WhoAmI() {
  return Show("whoami", &v1::JobService::Stub::WhoAmI, v1::WhoAmIRequest(),
              [](const v1::WhoAmIResponse& response) { return FormatWhoAmI(response); });
}

int Client::Agents() {
  // Every page, shown as one list.
  v1::ListAgentsRequest request;
  request.set_page_size(500);
  v1::ListAgentsResponse all;
  do {
    v1::ListAgentsResponse page;
    const grpc::Status status =
        Unary(&v1::JobService::Stub::ListAgents, request, &page, CommandDeadline());
    if (!status.ok()) return Fail(status, "agents");
    for (v1::AgentInfo& agent : *page.mutable_agents()) *all.add_agents() = std::move(agent);
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  out_ << (g_.json ? ToJson(all) + "\n"
                   : FormatAgentTable({all.agents().begin(), all.agents().end()},
                                      google::protobuf::util::TimeUtil::GetCurrentTime()));
  return kExitOk;
}

int Client::Update(const std::string& id, const std::optional<std::string>& name,
                   const std::vector<std::string>& set_labels,
                   const std::vector<std::string>& remove_labels) {
  std::vector<std::pair<std::string, std::string>> added;
  for (const std::string& l : set_labels) {
    StatusOr<std::pair<std::string, std::string>> label = ParseLabel(l);
    if (!label.ok()) return Fail(label.status(), "update " + id);
    added.push_back(*std::move(label));
  }
  const bool labels_change = !set_labels.empty() || !remove_labels.empty();
  if (!name && !labels_change) {
    Fail(InvalidArgumentError("nothing to change: give --name, --label or --remove-label"),
         "update " + id);
    return kExitUsage;
  }
  // The server replaces the whole label map: the new one is made from the
  // job as read, and sent with the etag of that read, so that an update
  // coming between is not overwritten (ABORTED, ETAG_MISMATCH): then read
  // again and reapply, a few times.
  constexpr int kAttempts = 5;
  const Deadline deadline = CommandDeadline();  // for all the attempts
  for (int attempt = 1;; ++attempt) {
    v1::UpdateJobRequest request;
    request.mutable_job()->set_id(id);
    if (name) {
      request.mutable_job()->mutable_spec()->set_name(*name);
      request.mutable_update_mask()->add_paths("spec.name");
    }
    if (labels_change) {
      v1::Job job;
      const grpc::Status got = GetJob(id, &job, deadline);
      if (!got.ok()) return Fail(got, "update " + id);
      request.mutable_job()->set_etag(job.etag());
      auto* labels = request.mutable_job()->mutable_spec()->mutable_labels();
      *labels = job.spec().labels();
      for (const std::string& key : remove_labels) labels->erase(key);
      for (const auto& [key, value] : added) (*labels)[key] = value;
      request.mutable_update_mask()->add_paths("spec.labels");
    }
    v1::Job job;
    const grpc::Status status = Unary(&v1::JobService::Stub::UpdateJob, request, &job, deadline);
    if (!status.ok() && attempt < kAttempts && IsReason(status, error_reason::kEtagMismatch)) {
      continue;
    }
    if (!status.ok()) return Fail(status, "update " + id);
    out_ << (g_.json ? ToJson(job) + "\n" : FormatJobDetails(job));
    return kExitOk;
  }
}

int Client::Delete(const std::string& id) {
  v1::DeleteJobRequest request;
  request.set_job_id(id);
  google::protobuf::Empty empty;
  const grpc::Status status =
      Unary(&v1::JobService::Stub::DeleteJob, request, &empty, CommandDeadline());
  if (!status.ok()) return Fail(status, "delete " + id);
  out_ << (g_.json ? "{}\n" : id + ": deleted\n");
  return kExitOk;
}

int Client::Cancel(const std::string& id, const std::string& reason) {
  v1::CancelJobRequest request;
  request.set_job_id(id);
  request.set_reason(reason);
  v1::Job job;
  const grpc::Status status =
      Unary(&v1::JobService::Stub::CancelJob, request, &job, CommandDeadline());
  if (!status.ok()) return Fail(status, "cancel " + id);
  if (g_.json) {
    out_ << ToJson(job) << "\n";
  } else if (job.state() == v1::JOB_STATE_CANCELLED) {
    out_ << id << ": CANCELLED\n";
  } else {
    out_ << id << ": cancelling (" << StateName(job.state())
         << "); `ternctl watch " << id << "` shows when its ranks have stopped\n";
  }
  return kExitOk;
}

grpc::Status Client::StreamEvents(const std::string& id, uint64_t from, bool include_logs,
                                  bool history_only, uint64_t* last_seq,
                                  const std::function<void(const v1::JobEvent&)>& on_event) {
  v1::WatchJobRequest request;
  request.set_job_id(id);
  request.set_from_sequence(from);
  request.set_include_logs(include_logs);
  request.set_history_only(history_only);
  // A stream refused by a standby (or an unreachable ternd) is opened again
  // on the leader, within the unary timeout; once events flow it lives as
  // long as the job, and the caller resumes it when it breaks.
  const auto give_up = std::chrono::system_clock::now() + Timeout();
  for (;;) {
    const failover::ServerList::Target target = servers_->Current();
    grpc::ClientContext ctx;
    Prepare(&ctx, milliseconds(0));  // lives as long as the job
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
        stubs_[target.index]->WatchJob(&ctx, request);
    v1::JobEvent event;
    bool any = false;
    while (reader->Read(&event)) {
      any = true;
      if (event.sequence() != 0 && event.sequence() <= *last_seq) continue;  // seen already
      *last_seq = std::max(*last_seq, event.sequence());
      on_event(event);
    }
    const grpc::Status status = reader->Finish();
    if (status.ok() || any) {
      if (any) servers_->OnSuccess(target);
      if (!status.ok()) (void)servers_->OnFailure(target, status);  // resume on the leader
      return status;
    }
    const std::optional<milliseconds> wait = servers_->OnFailure(target, status);
    if (!wait || std::chrono::system_clock::now() + *wait >= give_up) return status;
    std::this_thread::sleep_for(*wait);
    request.set_from_sequence(*last_seq + 1 > from ? *last_seq + 1 : from);
  }
}

int Client::Watch(const std::string& id, uint64_t from, bool include_logs, double reconnect_for_s) {
  uint64_t last_seq = from > 0 ? from - 1 : 0;
  std::optional<v1::JobState> final_state;
  std::optional<v1::Progress> progress;
  std::optional<double> top1;
  std::optional<v1::JobResult> result;
  bool bar_shown = false;
  const bool bar = tty_ && !g_.json;
  auto clear_bar = [&] {
    if (bar_shown) out_ << "\r\033[K";
    bar_shown = false;
  };
  auto draw_bar = [&] {
    if (!progress) return;
    out_ << "\r\033[K" << FormatProgressBar(*progress, top1) << std::flush;
    bar_shown = true;
  };
  auto on_event = [&](const v1::JobEvent& e) {
    if (e.has_state_change() && IsTerminal(e.state_change().to_state())) {
      final_state = e.state_change().to_state();
    }
    if (e.has_finished()) result = e.finished();
    if (e.has_epoch_end()) {
      const v1::EpochMetrics& m = e.epoch_end().metrics();
      if (m.has_ternary_top1()) {
        top1 = m.ternary_top1();
      } else if (m.has_fp_top1()) {
        top1 = m.fp_top1();
      }
    }
    if (g_.json) {
      out_ << ToJson(e) << "\n" << std::flush;
    } else if (!bar) {
      out_ << FormatEvent(e) << "\n" << std::flush;
    } else if (e.has_progress()) {
      progress = e.progress();
      draw_bar();
    } else {
      clear_bar();
      out_ << FormatEvent(e) << "\n";
      draw_bar();
      out_.flush();
    }
  };

  const auto give_up_after = milliseconds(static_cast<int64_t>(reconnect_for_s * 1000));
  Clock::time_point last_ok = Clock::now();
  milliseconds backoff(250);
  bool outage_reported = false;  // one message per outage, not per retry
  while (true) {
    const uint64_t before = last_seq;
    const grpc::Status status =
        StreamEvents(id, last_seq + 1, include_logs, /*history_only=*/false, &last_seq, on_event);
    if (last_seq != before) {
      last_ok = Clock::now();
      backoff = milliseconds(250);
    }
    if (outage_reported && (status.ok() || last_seq != before)) {
      clear_bar();
      err_ << "ternctl: watch " << id << ": stream back\n";
      draw_bar();
      outage_reported = false;
    }
    if (status.ok()) {
      if (final_state) break;
      // The stream ended without a terminal state: ask, then resume.
      v1::Job job;
      const grpc::Status got = GetJob(id, &job, CommandDeadline());
      if (got.ok() && IsTerminal(job.state())) {
        final_state = job.state();
        if (job.has_result()) result = job.result();
        break;
      }
    } else if (!Retryable(status) && status.error_code() != grpc::StatusCode::INTERNAL &&
               status.error_code() != grpc::StatusCode::UNKNOWN) {
      clear_bar();
      return Fail(status, "watch " + id);
    }
    if (Clock::now() - last_ok > give_up_after) {
      clear_bar();
      return Fail(status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream keeps ending")
                              : status,
                  "watch " + id);
    }
    if (!status.ok() && !outage_reported) {
      clear_bar();
      err_ << "ternctl: watch " << id << ": stream broke ("
           << StatusCodeName(static_cast<StatusCode>(status.error_code()))
           << "); retrying, to resume from sequence " << last_seq + 1 << "\n";
      draw_bar();
      outage_reported = true;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, milliseconds(5000));
  }
  clear_bar();
  if (!g_.json && bar) {
    out_ << "job " << id << " " << StateName(*final_state);
    if (result) out_ << ": " << FormatResult(*result);
    out_ << "\n";
  }
  out_.flush();
  return *final_state == v1::JOB_STATE_SUCCEEDED ? kExitOk : kExitJobFailed;
}

int Client::Logs(const std::string& id, bool follow) {
  uint64_t last_seq = 0;
  const grpc::Status status = StreamEvents(
      id, 0, /*include_logs=*/true, /*history_only=*/!follow, &last_seq,
      [&](const v1::JobEvent& e) {
        out_ << (g_.json ? ToJson(e) : FormatEvent(e)) << "\n" << std::flush;
      });
  if (!status.ok()) return Fail(status, "logs " + id);
  return kExitOk;
}

// A local file's error: kExitOther whatever its code (ternctl's NOT_FOUND
// and UNAVAILABLE exit codes speak of the server).
Status LocalFileError(const Status& status) { return InternalError(status.message()); }

int Client::Fetch(const std::string& id, const std::string& output) { return DownloadTo(id, output); }

int Client::DownloadTo(const std::string& id, const std::string& output) {
  const std::string what = "fetch " + id;
  std::optional<v1::ArtifactHeader> header;
  std::optional<v1::JobResult> result;
  std::unique_ptr<AtomicFile> file;
  std::string dest;
  Sha256 hash;
  int64_t written = 0;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext ctx;
    Prepare(&ctx, kFetchDeadline);
    v1::GetArtifactRequest request;
    request.set_job_id(id);
    request.set_offset(written);  // resumes an interrupted download
    const failover::ServerList::Target target = servers_->Current();
    std::unique_ptr<grpc::ClientReader<v1::GetArtifactResponse>> reader =
        stubs_[target.index]->GetArtifact(&ctx, request);
    v1::GetArtifactResponse msg;
    bool first = true;
    Status broken;
    while (broken.ok() && reader->Read(&msg)) {
      if (first && !msg.has_header()) {
        broken = DataLossError("the stream did not start with a header");
      } else if (msg.has_header()) {
        if (!first) {
          broken = DataLossError("a second header in the stream");
        } else if (header && (header->sha256() != msg.header().sha256() ||
                              header->size_bytes() != msg.header().size_bytes())) {
          broken = DataLossError("the artifact changed while resuming the download");
        } else if (!header) {
          header = msg.header();
          if (header->sha256().size() != 64) {
            broken = DataLossError("the server sent no valid sha256 ('" + header->sha256() + "')");
            break;
          }
          std::string name = fs::path(header->file_name()).filename().string();
          if (name.empty() || name == "." || name == "..") name = id + ".tern";
          std::error_code ec;
          dest = output.empty() ? name
                 : fs::is_directory(output, ec) ? (fs::path(output) / name).string()
                                                : output;
          file = std::make_unique<AtomicFile>(dest);
          if (Status s = file->Open(); !s.ok()) return Fail(LocalFileError(s), what);
        }
      } else if (msg.has_chunk()) {
        const v1::ArtifactChunk& c = msg.chunk();
        if (c.offset() != written) {
          broken = DataLossError("chunk at offset " + std::to_string(c.offset()) + ", expected " +
                                 std::to_string(written));
        } else if (written + static_cast<int64_t>(c.data().size()) > header->size_bytes()) {
          broken = DataLossError("more bytes than the announced " +
                                 std::to_string(header->size_bytes()));
        } else {
          if (Status s = file->Append(c.data()); !s.ok()) return Fail(LocalFileError(s), what);
          hash.Update(c.data());
          written += static_cast<int64_t>(c.data().size());
        }
      } else if (msg.has_result()) {
        result = msg.result();
      }
      first = false;
    }
    if (!broken.ok()) {
      ctx.TryCancel();
      reader->Finish();
      return Fail(broken, what);
    }
    const grpc::Status status = reader->Finish();
    if (status.ok()) break;
    // Refused by a standby before any byte: the leader, without using a resume.
    const std::optional<milliseconds> wait = servers_->OnFailure(target, status);
    if (wait && !header && attempt < 4 * kMaxFetchResumes) {
      std::this_thread::sleep_for(*wait);
      continue;
    }
    if (Retryable(status) && header && attempt < kMaxFetchResumes) {
      err_ << "ternctl: " << what << ": interrupted at byte " << written << " ("
           << StatusCodeName(static_cast<StatusCode>(status.error_code())) << "); resuming\n";
      std::this_thread::sleep_for(milliseconds(500));
      continue;
    }
    return Fail(status, what);
  }
  if (!header) return Fail(DataLossError("empty stream"), what);
  if (written != header->size_bytes()) {
    return Fail(DataLossError("got " + std::to_string(written) + " of " +
                              std::to_string(header->size_bytes()) + " bytes"),
                what);
  }
  const std::string digest = hash.HexDigest();
  if (digest != header->sha256()) {
    return Fail(DataLossError("checksum mismatch: sha256 " + digest + ", server announced " +
                              header->sha256() + "; nothing written"),
                what);
  }
  if (Status s = file->Commit(); !s.ok()) return Fail(LocalFileError(s), what);
  if (g_.json) {
    nlohmann::json j = {{"path", dest}, {"size_bytes", written}, {"sha256", digest}};
    if (result) j["result"] = nlohmann::json::parse(ToJson(*result), nullptr, false);
    out_ << j.dump() << "\n";
  } else {
    out_ << "wrote " << dest << " (" << written << " bytes, sha256 " << digest << " verified)\n";
    if (result) out_ << "result: " << FormatResult(*result) << "\n";
  }
  return kExitOk;
}

// `ternctl token new NAME`: a new bearer token, written to `output` (mode
// 0600, never over an existing file) or printed, and its --token-file line.
// "90d", "12h", "30m", "45s" from now, or an RFC 3339 time or a date
// ("2027-01-31", midnight UTC), as the `expires=` word of a token line; ""
// when `text` is empty; INVALID_ARGUMENT otherwise.
StatusOr<std::string> TokenExpiry(const std::string& text) {
  if (text.empty()) return std::string();
  google::protobuf::Timestamp when;
  const size_t digits = text.find_first_not_of("0123456789");
  if (digits > 0 && digits != std::string::npos && digits + 1 == text.size() &&
      std::string("smhd").find(text.back()) != std::string::npos && digits <= 9) {
    const int64_t unit = text.back() == 's' ? 1 : text.back() == 'm' ? 60
                         : text.back() == 'h' ? 3600 : 86400;
    const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    when.set_seconds(now + std::stoll(text.substr(0, digits)) * unit);
  } else if (!google::protobuf::util::TimeUtil::FromString(
                 text.size() == 10 ? text + "T00:00:00Z" : text, &when)) {
    return InvalidArgumentError("--expires: expected a duration (90d, 12h, 30m, 45s), a date "
                                "(2027-01-31) or an RFC 3339 time, got " + Quoted(text));
  }
  return "expires=" + google::protobuf::util::TimeUtil::ToString(when);
}

int NewTokenCommand(const std::string& name, bool admin, bool agent, const std::string& expires,
                    const std::string& output, std::ostream& out, std::ostream& err) {
  const bool name_ok = !name.empty() && name.size() <= 128 &&
                       std::all_of(name.begin(), name.end(),
                                   [](char c) { return c > 0x20 && c < 0x7f; });
  if (!name_ok) {
    err << "ternctl: NAME: must be 1..128 printable characters without spaces\n";
    return kExitUsage;
  }
  const StatusOr<std::string> expiry = TokenExpiry(expires);
  if (!expiry.ok()) {
    err << "ternctl: " << expiry.status().message() << "\n";
    return kExitUsage;
  }
  StatusOr<std::string> token = tls::NewToken();
  if (!token.ok()) {
    err << "ternctl: " << token.status().message() << "\n";
    return kExitOther;
  }
  const std::string line = tls::TokenHash(*token) + " " + name + (admin ? " admin" : "") +
                           (agent ? " agent" : "") + (expiry->empty() ? "" : " " + *expiry);
  if (output.empty()) {
    out << *token << "\n" << line << "\n";
    return kExitOk;
  }
  AtomicFile file(output, 0600, AtomicFile::Replace::kNo);
  Status written = file.Open();
  if (written.ok()) written = file.Append(*token + "\n");
  if (written.ok()) written = file.Commit();
  if (!written.ok()) {
    err << "ternctl: " << written.message()
        << (written.code() == StatusCode::kAlreadyExists ? " (a token file is never overwritten)"
                                                         : "")
        << "\n";
    return kExitOther;
  }
  out << line << "\n";
  return kExitOk;
}

}  // namespace

int ExitCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return kExitUsage;
    case StatusCode::kNotFound:
      return kExitNotFound;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitOther;
  }
}

int RunTernctl(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
               bool out_is_tty) {
  Globals g;
  CLI::App app("ternctl: submit, watch and fetch tern training jobs", "ternctl");
  app.require_subcommand(1);
  app.fallthrough();  // global flags after the command work too
  app.footer(kExitCodesHelp);
  app.add_option("--server", g.server,
                 "ternd's address, HOST:PORT; several ternd sharing one store: all of them, "
                 "comma-separated (calls go to the leader)")
      ->envname("TERN_SERVER")
      ->capture_default_str();
  app.add_option("--owner", g.owner, "identity sent as x-tern-owner metadata")
      ->envname("TERN_OWNER");
  app.add_flag("--json", g.json, "machine-readable output (proto3 JSON, one object per line)");
  app.add_option("--timeout", g.timeout_s, "deadline of each call, its retries included, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  tls::AddClientTlsFlags(app, &g.tls);

  std::function<int(Client&)> command;

  // submit
  std::string file, key, name, method, device;
  int epochs = 0, ranks = 0, batch_size = 0, priority = 0;
  double lr = 0;
  std::vector<std::string> submit_labels;
  bool submit_watch = false;
  CLI::App* submit = app.add_subcommand("submit", "submit a job file (YAML or JSON); prints its id");
  submit->add_option("FILE", file, "job file: a tern.v1.JobSpec as YAML or JSON")->required();
  CLI::Option* o_method = submit->add_option("--method", method, "quantization method: fp, twn, ttq, lat, hla, ...");
  CLI::Option* o_device = submit->add_option("--device", device, "device kind: cpu or cuda");
  CLI::Option* o_epochs = submit->add_option("--epochs", epochs, "optimization.epochs");
  CLI::Option* o_ranks = submit->add_option("--ranks", ranks, "resources.ranks");
  CLI::Option* o_batch = submit->add_option("--batch-size", batch_size, "optimization.batch_size (global)");
  CLI::Option* o_lr = submit->add_option("--lr", lr, "optimization.lr");
  CLI::Option* o_name = submit->add_option("--name", name, "job name");
  CLI::Option* o_priority = submit->add_option("--priority", priority, "priority, -1000..1000");
  bool cuda_graph = false;
  CLI::Option* o_cuda_graph = submit->add_option(
      "--cuda-graph", cuda_graph,
      "on|off: optimization.cuda_graph (CUDA classification jobs replay each step from a CUDA "
      "graph; 2.5x FP images/s on ResNet-20, H200)");
  submit->add_option("--label", submit_labels, "label KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  submit->add_option("--idempotency-key", key,
                     "makes resubmission return the same job (default: a random key, so "
                     "ternctl's own retries are safe)");
  submit->add_flag("--watch", submit_watch, "watch the job after submitting it");
  submit->callback([&] {
    command = [&](Client& c) {
      SpecOverrides o;
      if (o_method->count()) o.method = method;
      if (o_device->count()) o.device = device;
      if (o_epochs->count()) o.epochs = epochs;
      if (o_ranks->count()) o.ranks = ranks;
      if (o_batch->count()) o.batch_size = batch_size;
      if (o_lr->count()) o.lr = lr;
      if (o_name->count()) o.name = name;
      if (o_priority->count()) o.priority = priority;
      if (o_cuda_graph->count()) o.cuda_graph = cuda_graph;
      o.labels = submit_labels;
      return c.Submit(file, o, key, submit_watch);
    };
  });

  // list
  std::vector<std::string> states, list_labels;
  std::string list_owner, page_token;
  int limit = 50;
  CLI::App* list = app.add_subcommand("list", "list jobs, newest first");
  list->add_option("--state", states, "only jobs in these states (queued, running, ...)")
      ->delimiter(',')
      ->allow_extra_args(false);
  list->add_option("--label", list_labels, "only jobs with label KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  list->add_option("--owner", list_owner, "only jobs of this owner");
  list->add_option("--limit", limit, "at most this many jobs; 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  list->add_option("--page-token", page_token, "continue an earlier listing");
  list->callback([&] {
    command = [&](Client& c) { return c.List(states, list_labels, list_owner, limit, page_token); };
  });

  std::string id;
  CLI::App* whoami = app.add_subcommand(
      "whoami", "show the identity ternd takes this client to be (certificate, token or --owner)");
  whoami->callback([&] { command = [&](Client& c) { return c.WhoAmI(); }; });

  CLI::App* agents = app.add_subcommand(
      "agents", "list the node agents: state (ready, draining), slots in use, lease");
  agents->callback([&] { command = [&](Client& c) { return c.Agents(); }; });

  CLI::App* get = app.add_subcommand("get", "show one job");
  get->add_option("ID", id, "job id")->required();
  get->callback([&] { command = [&](Client& c) { return c.Get(id); }; });

  uint64_t from = 0;
  bool with_logs = false;
  double reconnect_for = 60;
  CLI::App* watch = app.add_subcommand(
      "watch", "follow a job until it ends (progress bar on a terminal); exit 1 if it FAILED or "
               "was CANCELLED");
  watch->add_option("ID", id, "job id")->required();
  watch->add_option("--from", from, "first event sequence (default: the whole history)");
  watch->add_flag("--logs", with_logs, "also print the trainers' log lines");
  watch->add_option("--reconnect-for", reconnect_for,
                    "seconds to keep reconnecting a broken stream")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  watch->callback([&] {
    command = [&](Client& c) { return c.Watch(id, from, with_logs, reconnect_for); };
  });

  std::string reason;
  CLI::App* cancel = app.add_subcommand("cancel", "cancel a job");
  cancel->add_option("ID", id, "job id")->required();
  cancel->add_option("--reason", reason, "recorded in the job's state reason");
  cancel->callback([&] { command = [&](Client& c) { return c.Cancel(id, reason); }; });

  std::string new_name;
  std::vector<std::string> set_labels, remove_labels;
  CLI::App* update = app.add_subcommand(
      "update", "change a job's name or labels (the only fields that change after submission)");
  update->add_option("ID", id, "job id")->required();
  CLI::Option* o_new_name = update->add_option("--name", new_name, "the job's new name");
  update->add_option("--label", set_labels, "set label KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  update->add_option("--remove-label", remove_labels, "remove label KEY (repeatable)")
      ->allow_extra_args(false);
  update->callback([&] {
    command = [&](Client& c) {
      return c.Update(id, o_new_name->count() ? std::optional<std::string>(new_name) : std::nullopt,
                      set_labels, remove_labels);
    };
  });

  CLI::App* del = app.add_subcommand(
      "delete", "delete a finished job: its record, history, artifact and checkpoints");
  del->add_option("ID", id, "job id")->required();
  del->callback([&] { command = [&](Client& c) { return c.Delete(id); }; });

  bool follow = false;
  CLI::App* logs = app.add_subcommand("logs", "print a job's events and trainer log lines");
  logs->add_option("ID", id, "job id")->required();
  logs->add_flag("-f,--follow", follow, "keep printing until the job ends");
  logs->callback([&] { command = [&](Client& c) { return c.Logs(id, follow); }; });

  std::string output;
  CLI::App* fetch = app.add_subcommand(
      "fetch", "download a SUCCEEDED job's .tern artifact, verifying its sha256");
  fetch->add_option("ID", id, "job id")->required();
  fetch->add_option("-o,--output", output,
                    "file or directory to write (default: the server's file name, here)");
  fetch->callback([&] { command = [&](Client& c) { return c.Fetch(id, output); }; });

  // token new
  std::string token_name, token_output, token_expires;
  bool token_admin = false, token_agent = false;
  std::function<int()> local_command;  // needs no server
  CLI::App* token = app.add_subcommand("token", "bearer tokens for ternd --token-file");
  token->require_subcommand(1);
  CLI::App* token_new = token->add_subcommand(
      "new", "make a token for NAME: prints its ternd --token-file line (and the token itself "
             "first, without -o)");
  token_new->add_option("NAME", token_name, "the identity the token proves")->required();
  token_new->add_flag("--admin", token_admin, "may read, list and cancel every owner's jobs");
  token_new->add_flag("--agent", token_agent, "may act as a tern-agent (agent_id = NAME)");
  token_new->add_option("--expires", token_expires,
                        "when ternd stops taking it: a duration (90d, 12h), a date (2027-01-31) "
                        "or an RFC 3339 time (default: never)");
  token_new->add_option("-o,--output", token_output,
                        "write the token to this new file (mode 0600) instead of stdout");
  token_new->callback([&] {
    local_command = [&] {
      return NewTokenCommand(token_name, token_admin, token_agent, token_expires, token_output,
                             out, err);
    };
  });

  std::string inspect_path;
  CLI::App* inspect = app.add_subcommand(
      "inspect", "what a .tern artifact holds: model, training, tensors, bits per weight, size "
                 "(read here: no server)");
  inspect->add_option("FILE", inspect_path, "the .tern file")->required();
  inspect->callback([&] {
    local_command = [&] { return InspectArtifactCommand(inspect_path, g.json, out, err); };
  });

  std::string export_path;
  ExportOptions export_options;
  CLI::App* export_cmd =
      app.add_subcommand("export",
                         "a .tern artifact as ONNX (runs in ONNX Runtime) or safetensors (PyTorch "
                         "state-dict names), converted here: no server");
  export_cmd->add_option("FILE", export_path, "the .tern file")->required();
  export_cmd->add_option("--format", export_options.format, "onnx or safetensors")->required();
  export_cmd->add_option("-o,--output", export_options.output, "the file to write")->required();
  export_cmd->add_flag("--float", export_options.float_weights,
                       "onnx: float32 weights instead of int8 codes + DequantizeLinear");
  export_cmd->add_flag("--codes", export_options.codes,
                       "safetensors: int8 codes + scales instead of dequantized float32");
  export_cmd->callback([&] {
    local_command = [&] { return ExportArtifactCommand(export_path, export_options, out, err); };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::ParseError& e) {
    app.exit(e, out, err);
    return kExitUsage;
  }
  if (local_command) return local_command();
  if (!command) return kExitUsage;
  g.tls.reload_interval_s = 0;  // one command: read the files once
  StatusOr<std::vector<std::string>> addresses =
      failover::ParseServerAddresses("--server", g.server);
  if (!addresses.ok()) {
    err << "ternctl: " << addresses.status().message() << "\n";
    return kExitUsage;
  }
  // With several addresses the ServerList retries on the others; the
  // channel's own retry policy would first retry a standby's NOT_LEADER
  // on the same ternd.
  const bool several = addresses->size() > 1;
  StatusOr<std::shared_ptr<failover::ServerList>> servers =
      failover::ServerList::Create(*addresses, [&](const std::string& address) {
        return tls::MakeChannel(address, g.tls, several ? "" : v1::kJobServiceConfigJson);
      });
  if (!servers.ok()) {
    err << "ternctl: " << servers.status().message() << "\n";
    return kExitUsage;
  }
  Client client(g, *std::move(servers), out, err, out_is_tty);
  return command(client);
}

}  // namespace tern::cli
