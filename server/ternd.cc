#include "server/ternd.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <system_error>
#include <utility>

#include "auth/metrics_endpoint.h"
#include "auth/token_table.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "path_policy/path_rules.h"
#include "scheduler/open_job_store.h"
#include "scheduler/postgres_job_store.h"
#include "server/job_service.h"
#include "server/observed_job_store.h"
#include "server/progress_cache.h"
#include "server/rendezvous_key.h"
#include "server/rpc.h"
#include "server/server_metrics.h"
#include "server/server_state.h"
#include "server/standby_service.h"
#include "server/web_api.h"
#include "server/worker_service.h"

namespace tern::server {
namespace {

using std::chrono::milliseconds;

StatusOr<std::string> AbsoluteDirectory(const std::string& path,
                                        const std::string& field) {
  if (path.empty()) return InvalidArgumentError(field + ": required");
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) {
    return InvalidArgumentError(field + ": " + path + ": " + ec.message());
  }
  std::string out = abs.lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  TERN_RETURN_IF_ERROR(MakeDirectories(out).WithContext(field));
  return out;
}

// "host:port" with `port` in place of the configured one.
std::string WithPort(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  std::string host =
      colon == std::string::npos ? address : address.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  return host + ":" + std::to_string(port);
}

// A listen host that names no interface: it cannot be told to others.
bool IsWildcardListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::" || host == "*";
}

std::string DefaultHolderId() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "ternd");
  std::random_device random;
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, "-%d-%08x", static_cast<int>(getpid()), random());
  return std::string(host) + suffix;
}

// The job store, fenced with `epoch` where the store is shared (several
// ternd); `on_fenced` is called when it refuses a write for a later epoch.
StatusOr<std::unique_ptr<scheduler::JobStore>> OpenStore(const TerndOptions& options, int64_t epoch,
                                                         std::function<void()> on_fenced) {
  // Only a PostgreSQL store is fenced; an SQLite file shared by several
  // in-process Ternd (tests) is not.
  if (!scheduler::IsPostgresUrl(options.db_path)) epoch = 0;
  return scheduler::OpenJobStore(options.db_path, epoch,
                                 epoch > 0 ? std::move(on_fenced) : std::function<void()>());
}

}  // namespace

Status TerndOptions::Validate() const {
  if (listen.empty()) return InvalidArgumentError("listen: required");
  if (db_path.empty()) return InvalidArgumentError("db_path: required");
  if (scheduler::IsPostgresUrl(db_path) && rendezvous_key_file.empty()) {
    // Not a file name to derive one from; and every ternd sharing the store
    // needs the same key.
    return InvalidArgumentError("rendezvous_key_file: required with a PostgreSQL db_path");
  }
  if (artifact_root.empty()) {
    return InvalidArgumentError("artifact_root: required");
  }
  if (checkpoint_root.empty()) {
    return InvalidArgumentError("checkpoint_root: required");
  }
  if (tick_interval.count() <= 0) {
    return InvalidArgumentError("tick_interval: must be > 0");
  }
  if (metrics_tls_cert.empty() != metrics_tls_key.empty()) {
    return InvalidArgumentError("metrics_tls_cert, metrics_tls_key: both or neither");
  }
  if (!token_file.empty() && tls.cert_file.empty()) {
    return InvalidArgumentError(
        "token_file: needs TLS (--tls-cert, --tls-key): bearer tokens must not cross the "
        "network in plaintext");
  }
  if (web_tls_cert.empty() != web_tls_key.empty()) {
    return InvalidArgumentError("web_tls_cert, web_tls_key: both or neither");
  }
  if (!web_listen.empty() && !tls.client_ca_file.empty() && token_file.empty()) {
    return InvalidArgumentError(
        "web_listen: with tls_client_ca (mutual TLS) the web console needs token_file: "
        "browsers present no client certificate, and without tokens the console would show "
        "every job to anyone who reaches it");
  }
  if (!token_file.empty() && !web_listen.empty() && web_tls_cert.empty()) {
    const std::string host = web_listen.substr(0, web_listen.rfind(':'));
    if (host != "127.0.0.1" && host != "localhost" && host != "[::1]") {
      return InvalidArgumentError(
          "web_listen: with token_file the web console needs HTTPS (--web-tls-cert, "
          "--web-tls-key) unless it listens on loopback (127.0.0.1, localhost, [::1]): bearer "
          "tokens must not cross the network in plaintext");
    }
  }
  TERN_RETURN_IF_ERROR(paths::ParseRoots("read_roots", read_roots).status());
  TERN_RETURN_IF_ERROR(paths::ParseRoots("write_roots", write_roots).status());
  // Lease, backoff, backfill, aging and port rules are the scheduler's own.
  TERN_RETURN_IF_ERROR(scheduler.Validate());
  if (job_metrics_grace.count() < 0 || kill_grace.count() < 0 ||
      shutdown_grace.count() < 0) {
    return InvalidArgumentError(
        "job_metrics_grace, kill_grace, shutdown_grace: must be >= 0");
  }
  if (long_poll.count() <= 0)
    return InvalidArgumentError("long_poll: must be > 0");
  if (max_watch_streams_per_caller < 0) {
    return InvalidArgumentError("max_watch_streams_per_caller: must be >= 0");
  }
  if (!advertise_address.empty() &&
      (advertise_address.rfind(':') == std::string::npos || advertise_address.back() == ':' ||
       advertise_address.front() == ':' || IsWildcardListen(advertise_address))) {
    return InvalidArgumentError("advertise_address: \"" + advertise_address +
                                "\" is not a host:port others can reach");
  }
  if (election != nullptr) {
    if (advertise_address.empty() && IsWildcardListen(listen)) {
      return InvalidArgumentError(
          "advertise_address: required with several ternd (a shared store) when listen \"" +
          listen +
          "\" names no single host: standbys tell clients and agents this address as the "
          "leader's");
    }
    if (rendezvous_key_file.empty()) {
      return InvalidArgumentError(
          "rendezvous_key_file: required with several ternd (a shared store): every ternd "
          "must hold the same key (running jobs' ranks meet under keys derived from it), so "
          "it cannot default to a file next to the store");
    }
    if (leader_lease_ttl < milliseconds(300)) {
      return InvalidArgumentError("leader_lease_ttl: must be >= 300ms");
    }
    if (standby_poll.count() < 0) return InvalidArgumentError("standby_poll: must be >= 0");
  }
  return OkStatus();
}

StatusOr<milliseconds> ParseDuration(std::string_view text) {
  const std::string shown(text);
  if (text == "0") return milliseconds(0);
  int64_t value = 0;
  auto [ptr, ec] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  const std::string_view unit(ptr, text.data() + text.size() - ptr);
  int64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60 * 1000;
  } else if (unit == "h") {
    scale = 3600 * 1000;
  }
  if (ec != std::errc() || ptr == text.data() || value < 0 || scale == 0) {
    return InvalidArgumentError("\"" + shown +
                                "\" is not a duration like 500ms, 15s, 5m, 1h");
  }
  if (value > std::numeric_limits<int64_t>::max() / scale) {
    return InvalidArgumentError("\"" + shown + "\": duration too long");
  }
  return milliseconds(value * scale);
}

std::string FormatDuration(milliseconds duration) {
  const int64_t ms = duration.count();
  if (ms == 0) return "0";
  for (const auto& [scale, unit] :
       {std::pair<int64_t, const char*>{3600 * 1000, "h"}, {60 * 1000, "m"}, {1000, "s"}}) {
    if (ms % scale == 0) return std::to_string(ms / scale) + unit;
  }
  return std::to_string(ms) + "ms";
}

Ternd::Ternd(TerndOptions options) : options_(std::move(options)) {}

Ternd::~Ternd() { Shutdown(); }

StatusOr<std::unique_ptr<Ternd>> Ternd::Start(
    TerndOptions options, std::shared_ptr<scheduler::Clock> clock) {
  TERN_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Ternd> ternd(new Ternd(std::move(options)));
  TERN_RETURN_IF_ERROR(ternd->Init(std::move(clock)));
  return ternd;
}

Status Ternd::Init(std::shared_ptr<scheduler::Clock> clock) {
  if (clock == nullptr) clock = std::make_shared<scheduler::SystemClock>();
  clock_ = clock;
  JobLayout layout;
  TERN_ASSIGN_OR_RETURN(
      layout.artifact_root,
      AbsoluteDirectory(options_.artifact_root, "artifact_root"));
  TERN_ASSIGN_OR_RETURN(
      layout.checkpoint_root,
      AbsoluteDirectory(options_.checkpoint_root, "checkpoint_root"));

  metrics_ =
      std::make_unique<ServerMetrics>(&registry_, options_.job_metrics_grace);
  metrics_->SetLeader(false, 0);
  state_ = std::make_unique<ServerState>();
  state_->clock = clock;
  state_->metrics = metrics_.get();
  state_->layout = layout;
  TERN_ASSIGN_OR_RETURN(state_->path_policy.read_roots,
                        paths::ParseRoots("read_roots", options_.read_roots));
  TERN_ASSIGN_OR_RETURN(state_->path_policy.write_roots,
                        paths::ParseRoots("write_roots", options_.write_roots));
  state_->long_poll = options_.long_poll;
  state_->max_watch_streams_per_caller = options_.max_watch_streams_per_caller;
  state_->lease_ttl = options_.scheduler.agent_lease_ttl;
  state_->kill_grace = options_.kill_grace;
  state_->agent_names = options_.tls_agent_names;
  state_->admin_names = options_.tls_admin_names;
  if (!options_.token_file.empty()) {
    StatusOr<std::unique_ptr<TokenTable>> tokens = TokenTable::Load(options_.token_file);
    if (!tokens.ok()) return tokens.status().WithContext("token_file");
    tokens_ = std::move(tokens).value();
    state_->tokens = tokens_.get();
  }
  {
    const std::string path = options_.rendezvous_key_file.empty()
                                 ? options_.db_path + ".rendezvous-key"
                                 : options_.rendezvous_key_file;
    StatusOr<RendezvousKeys> keys = RendezvousKeys::LoadOrCreate(path);
    if (!keys.ok()) return keys.status().WithContext("rendezvous_key_file");
    rendezvous_keys_ = std::make_unique<RendezvousKeys>(*std::move(keys));
    state_->rendezvous_keys = rendezvous_keys_.get();
  }

  if (options_.election == nullptr) {
    TERN_RETURN_IF_ERROR(StartLeading(0, options_.listen));
  } else {
    holder_id_ = options_.holder_id.empty() ? DefaultHolderId() : options_.holder_id;
    TERN_RETURN_IF_ERROR(StartStandby());
  }

  TERN_ASSIGN_OR_RETURN(
      http_, tls::StartMetricsEndpoint({options_.metrics_listen, options_.metrics_token_file,
                                        options_.metrics_tls_cert, options_.metrics_tls_key},
                                       &registry_));
  if (http_ != nullptr) {
    metrics_address_ = WithPort(options_.metrics_listen, http_->port());
    // Ready only while leading: a Kubernetes Service then routes to the leader.
    http_->Handle("/readyz", [this] {
      metrics::MetricsHttpServer::Response response;
      if (leading_.load() && !lost_.load()) {
        response.body = "leader\n";
      } else {
        response.status = 503;
        response.body = lost_.load() ? "leadership lost\n" : "standby\n";
      }
      return response;
    });
  }
  if (options_.election != nullptr) {
    TERN_LOG(INFO) << "ternd: standby on " << address_ << " (advertised as " << advertise_address_
                   << ", election id " << holder_id_ << "); taking the lease when it is free";
    election_thread_ = std::thread([this] { ElectionLoop(); });
  }
  return OkStatus();
}

Status Ternd::StartStandby() {
  standby_service_ = std::make_unique<StandbyService>([this] {
    std::lock_guard<std::mutex> lock(leader_mu_);
    if (lost_.load()) return LeadershipLostError();
    return NotLeaderError(advertise_address_.empty() ? options_.listen : advertise_address_,
                          known_leader_);
  });
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                        tls::MakeServerCredentials(options_.tls));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen, credentials, &port_);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterCallbackGenericService(standby_service_.get());
  standby_server_ = builder.BuildAndStart();
  if (standby_server_ == nullptr || port_ == 0) {
    standby_server_.reset();
    return UnavailableError("cannot listen on " + options_.listen);
  }
  {
    std::lock_guard<std::mutex> lock(leader_mu_);
    address_ = WithPort(options_.listen, port_);
    advertise_address_ = options_.advertise_address.empty() ? address_ : options_.advertise_address;
  }
  // Alive (liveness: ""), but not ready: the tern.v1 services are the leader's.
  grpc::HealthCheckServiceInterface* health = standby_server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus("", true);
    health->SetServingStatus(v1::JobService::service_full_name(), false);
    health->SetServingStatus(v1::WorkerService::service_full_name(), false);
  }
  return OkStatus();
}

Status Ternd::StartLeading(int64_t epoch, const std::string& listen) {
  ServerMetrics* metrics = metrics_.get();
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<scheduler::JobStore> opened,
                        OpenStore(options_, epoch, [this] {
                          MarkLeadershipLost("the job store refused a write: a later epoch exists");
                        }));
  auto store = std::make_unique<ObservedJobStore>(
      std::move(opened), [metrics](const scheduler::Job& job, const scheduler::JobEvent& event) {
        metrics->OnJobEvent(job, event);
      });
  TERN_ASSIGN_OR_RETURN(scheduler_,
                        scheduler::Scheduler::Create(options_.scheduler, std::move(store), clock_));
  progress_ = std::make_unique<ProgressCache>(scheduler_.get());
  state_->scheduler = scheduler_.get();
  state_->progress = progress_.get();
  TERN_RETURN_IF_ERROR(LoadQuotasIfChanged(/*initial=*/true));
  job_service_ = std::make_unique<JobService>(state_.get());
  worker_service_ = std::make_unique<WorkerService>(state_.get());

  // A standby's server holds the port: hand it over (calls in between fail
  // to connect, and clients retry).
  if (standby_server_ != nullptr) {
    standby_server_->Shutdown(std::chrono::system_clock::now() + milliseconds(100));
    standby_server_->Wait();
    standby_server_.reset();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                        tls::MakeServerCredentials(options_.tls));
  // The port the standby released may take a moment to be free again.
  const auto bind_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(listen, credentials, &port_);
    // A second ternd on the same port must fail, not share it.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.RegisterService(job_service_.get());
    builder.RegisterService(worker_service_.get());
    // Long-lived streams: find dead peers, and let agents ping an idle stream.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    // Keep the threads of a burst of concurrent calls (SubmitJob waits for
    // its group commit on its thread) as idle pollers: with gRPC's default of
    // two, all but two exit after each batch and the next calls start new
    // ones (at 128 clients about 800 thread starts a second; docs/BENCHMARKS.md).
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                                options_.rpc_idle_threads);
    server_ = builder.BuildAndStart();
    if (server_ != nullptr && port_ != 0) break;
    server_.reset();
    if (options_.election == nullptr || std::chrono::steady_clock::now() > bind_deadline) {
      return UnavailableError("cannot listen on " + listen);
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  {
    std::lock_guard<std::mutex> lock(leader_mu_);
    address_ = WithPort(listen, port_);
    advertise_address_ = options_.advertise_address.empty() ? address_ : options_.advertise_address;
  }
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus("", true);
    health->SetServingStatus(v1::JobService::service_full_name(), true);
    health->SetServingStatus(v1::WorkerService::service_full_name(), true);
  }

  if (!options_.web_listen.empty()) {
    web_api_ = std::make_unique<WebApi>(server_->InProcessChannel(grpc::ChannelArguments()));
    web_http_ = std::make_unique<metrics::MetricsHttpServer>(options_.web_listen, &registry_);
    if (!options_.web_tls_cert.empty()) {
      const Status tls = web_http_->UseTls(options_.web_tls_cert, options_.web_tls_key);
      if (!tls.ok()) return tls.WithContext("web_tls_cert, web_tls_key");
    }
    web_api_->InstallOn(web_http_.get());
    const Status started = web_http_->Start();
    if (!started.ok()) return started.WithContext("web_listen");
    web_address_ = WithPort(options_.web_listen, web_http_->port());
    TERN_LOG(INFO) << "ternd: web console on " << (options_.web_tls_cert.empty() ? "http" : "https")
                   << "://" << web_address_ << "/";
  }
  metrics_->UpdateScheduler(scheduler_->Stats());
  epoch_ = epoch;
  leading_ = true;
  metrics_->SetLeader(true, epoch);
  tick_thread_ = std::thread([this] { TickLoop(); });
  // gRPC 1.51 serves callback methods (WatchJob, the health service) from a
  // queue whose threads, after an idle second, sleep 100 ms outside the
  // poller; with no other thread in it, every call arriving then waited those
  // 100 ms (a p99 of ~95 ms at any load; 5 ms with this thread at 1,000
  // SubmitJob/s: docs/BENCHMARKS.md).
  poll_keeper_cq_ = std::make_unique<grpc::CompletionQueue>();
  poll_keeper_ = std::thread([cq = poll_keeper_cq_.get()] {
    void* tag = nullptr;
    bool ok = false;
    while (cq->Next(&tag, &ok)) {
    }
  });
  TERN_LOG(INFO) << "ternd: serving on " << address_ << ", store "
                 << scheduler::JobStoreDisplayName(options_.db_path) << ", artifacts under "
                 << state_->layout.artifact_root << ", checkpoints under "
                 << state_->layout.checkpoint_root
                 << (options_.election != nullptr ? ", leading with epoch " + std::to_string(epoch)
                                                  : std::string());
  if (tokens_ != nullptr) {
    TERN_LOG(INFO) << "ternd: " << tokens_->size() << " bearer tokens from "
                   << options_.token_file;
  }
  if (state_->path_policy.Restricts()) {
    TERN_LOG(INFO) << "ternd: specs may read under --read-roots \"" << options_.read_roots
                   << "\" and write checkpoints under --write-roots \"" << options_.write_roots
                   << "\"";
  }
  return OkStatus();
}

std::string Ternd::KnownLeader() const {
  std::lock_guard<std::mutex> lock(leader_mu_);
  return known_leader_;
}

void Ternd::ElectionLoop() {
  const milliseconds ttl = options_.leader_lease_ttl;
  const milliseconds renew_every = std::max(ttl / 3, milliseconds(1));
  const milliseconds poll = options_.standby_poll.count() > 0
                                ? options_.standby_poll
                                : std::max(std::min(ttl / 5, milliseconds(1000)), milliseconds(1));
  scheduler::LeaderElection* election = options_.election;
  std::chrono::steady_clock::time_point last_renewed;
  bool leading = false;
  bool first_try = true;
  std::string last_error;  // logged once per change, not every poll
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (!first_try) {
      election_wake_.wait_for(lock, leading ? renew_every : poll,
                              [this] { return stopping_ || lost_.load(); });
    }
    first_try = false;
    if (stopping_) break;
    lock.unlock();
    if (lost_.load()) {
      FinishLeadershipLost();
      return;
    }
    const auto sent = std::chrono::steady_clock::now();
    if (!leading) {
      StatusOr<scheduler::Leadership> got =
          election->TryAcquire(holder_id_, advertise_address_, ttl);
      if (!got.ok()) {
        if (got.status().ToString() != last_error) {
          TERN_LOG(WARNING) << "ternd: cannot ask the election (retrying): " << got.status();
          last_error = got.status().ToString();
        }
        std::lock_guard<std::mutex> leader_lock(leader_mu_);
        known_leader_.clear();
      } else if (!got->held) {
        last_error.clear();
        std::lock_guard<std::mutex> leader_lock(leader_mu_);
        known_leader_ = got->expired ? std::string() : got->address;
      } else {
        {
          std::lock_guard<std::mutex> leader_lock(leader_mu_);
          known_leader_ = advertise_address_;  // clients wait for this one
        }
        TERN_LOG(INFO) << "ternd: took the lease (epoch " << got->epoch
                       << "); opening the store and loading the jobs";
        const auto begin = std::chrono::steady_clock::now();
        const Status started = StartLeading(got->epoch, WithPort(options_.listen, port_));
        if (!started.ok()) {
          TERN_LOG(ERROR) << "ternd: cannot start leading: " << started;
          (void)election->Release(got->epoch);
          MarkLeadershipLost("could not start leading: " + started.ToString());
          FinishLeadershipLost();
          return;
        }
        TERN_LOG(INFO) << "ternd: leading (epoch " << got->epoch << ") after "
                       << std::chrono::duration_cast<milliseconds>(
                              std::chrono::steady_clock::now() - begin)
                              .count()
                       << " ms of loading";
        last_renewed = sent;
        leading = true;
      }
    } else {
      const Status renewed = election->Renew(epoch_.load(), ttl);
      if (renewed.ok()) {
        last_renewed = sent;
      } else if (renewed.code() == StatusCode::kAborted) {
        MarkLeadershipLost("another ternd took the lease: " + renewed.ToString());
        FinishLeadershipLost();
        return;
      } else {
        TERN_LOG(WARNING) << "ternd: cannot renew the lease (retrying): " << renewed;
        // The store judges the lease from when it saw the renewal, which
        // was after we sent it: past this point another ternd may lead.
        if (std::chrono::steady_clock::now() - last_renewed >= ttl) {
          MarkLeadershipLost("the lease was not renewed for " + FormatDuration(ttl) + ": " +
                             renewed.ToString());
          FinishLeadershipLost();
          return;
        }
      }
    }
    lock.lock();
  }
}

void Ternd::MarkLeadershipLost(const std::string& why) {
  if (lost_.exchange(true)) return;
  state_->leadership_lost = true;  // every call refused from now on
  {
    std::lock_guard<std::mutex> lock(leader_mu_);
    known_leader_.clear();
    lost_why_ = why;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);  // the waits' predicates read lost_
  }
  election_wake_.notify_all();
  stop_tick_.notify_all();
}

void Ternd::FinishLeadershipLost() {
  leading_ = false;
  metrics_->SetLeader(false, 0);
  if (server_ != nullptr) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    if (health != nullptr) {
      health->SetServingStatus(v1::JobService::service_full_name(), false);
      health->SetServingStatus(v1::WorkerService::service_full_name(), false);
    }
  }
  if (job_service_ != nullptr) job_service_->StopStreams();
  std::string why;
  {
    std::lock_guard<std::mutex> lock(leader_mu_);
    why = lost_why_;
  }
  TERN_LOG(ERROR) << "ternd: no longer leading (" << why << "); refusing every call and stopping";
  if (options_.on_leadership_lost) options_.on_leadership_lost();
}

int Ternd::metrics_port() const { return http_ ? http_->port() : 0; }

int Ternd::web_port() const { return web_http_ ? web_http_->port() : 0; }

void Ternd::TickLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    stop_tick_.wait_for(lock, options_.tick_interval, [this] { return stopping_ || lost_.load(); });
    if (stopping_ || lost_.load()) break;
    lock.unlock();
    TickOnce();
    lock.lock();
  }
}

Status Ternd::LoadQuotasIfChanged(bool initial) {
  if (options_.quota_file.empty()) return OkStatus();
  const std::string stamp = FileChangeStamp(options_.quota_file);
  if (!initial && stamp == quota_stamp_) return OkStatus();
  quota_stamp_ = stamp;
  StatusOr<std::string> text = ReadFileToString(options_.quota_file);
  StatusOr<scheduler::QuotaTable> quotas =
      text.ok() ? scheduler::QuotaTable::Parse(*text, options_.quota_file)
                : StatusOr<scheduler::QuotaTable>(text.status());
  metrics_->SetQuotaFileStale(!quotas.ok());
  if (!quotas.ok()) {
    if (initial) return quotas.status().WithContext("quota_file");
    TERN_LOG(ERROR) << "ternd: quota file changed but cannot be used, keeping the previous "
                       "quotas: "
                    << quotas.status();
    return OkStatus();
  }
  TERN_LOG(INFO) << "ternd: " << quotas->size() << " quota lines from " << options_.quota_file;
  scheduler_->SetQuotas(*std::move(quotas));
  return OkStatus();
}

void Ternd::TickOnce() {
  if (lost_.load()) return;                      // another ternd leads: do nothing more
  (void)LoadQuotasIfChanged(/*initial=*/false);  // logs its own errors
  const scheduler::TimePoint now = state_->clock->Now();
  Status status = scheduler_->Tick();
  if (!status.ok()) {
    TERN_LOG(WARNING) << "ternd: tick failed (retried next tick): " << status;
  }
  worker_service_->ExpireLeases(now);
  metrics_->UpdateScheduler(scheduler_->Stats());
  metrics_->DropEndedJobs(now);
}

void Ternd::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  stop_tick_.notify_all();
  election_wake_.notify_all();
  // No promotion, renewal or loss handling from here on.
  if (election_thread_.joinable()) election_thread_.join();
  const bool was_leading = leading_.exchange(false);
  // The console's handlers call the gRPC server in-process: stop them first.
  if (web_http_) web_http_->Stop();
  web_http_.reset();
  web_api_.reset();
  if (server_) {
    grpc::HealthCheckServiceInterface* health =
        server_->GetHealthCheckService();
    if (health != nullptr) health->Shutdown();  // NOT_SERVING from now on
    // New calls get UNAVAILABLE; streams end within one long-poll round;
    // unary calls that started finish, up to shutdown_grace.
    state_->shutting_down = true;
    job_service_->StopStreams();  // open WatchJob streams end UNAVAILABLE
    const auto deadline =
        std::chrono::steady_clock::now() + options_.shutdown_grace;
    while (state_->in_flight.load() > 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    // A moment for the last responses to leave, then close the connections
    // (gRPC would otherwise wait for idle clients, e.g. agents, to hang up).
    server_->Shutdown(std::chrono::system_clock::now() + milliseconds(200));
    server_->Wait();
  }
  if (standby_server_) {
    grpc::HealthCheckServiceInterface* health = standby_server_->GetHealthCheckService();
    if (health != nullptr) health->Shutdown();
    standby_server_->Shutdown(std::chrono::system_clock::now() + milliseconds(200));
    standby_server_->Wait();
  }
  if (tick_thread_.joinable()) tick_thread_.join();
  if (poll_keeper_cq_) poll_keeper_cq_->Shutdown();
  if (poll_keeper_.joinable()) poll_keeper_.join();
  if (http_) http_->Stop();
  server_.reset();
  standby_server_.reset();
  standby_service_.reset();
  job_service_.reset();
  worker_service_.reset();
  state_.reset();
  progress_.reset();
  if (scheduler_) {
    scheduler_.reset();  // closes the store
    TERN_LOG(INFO) << "ternd: stopped; job store closed";
  }
  // After the store is closed: a standby takes over now, not after the TTL.
  if (options_.election != nullptr && was_leading && !lost_.load()) {
    const Status released = options_.election->Release(epoch_.load());
    if (released.ok()) {
      TERN_LOG(INFO) << "ternd: released the lease (epoch " << epoch_.load() << ")";
    } else {
      TERN_LOG(WARNING) << "ternd: cannot release the lease (a standby takes over once it "
                           "expires): "
                        << released;
    }
  }
}

}  // namespace tern::server
