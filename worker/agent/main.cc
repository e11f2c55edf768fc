// tern-agent: the node daemon. Registers this machine's slots with ternd and
// runs the tern-trainer processes ternd assigns to it.
//
//   tern-agent --server 127.0.0.1:7070 --cpu-slots 2
//              [--agent-id ID] [--host ADDR] [--cuda-slots N]
//              [--trainer PATH] [--workdir DIR] [--metrics-listen HOST:PORT]
//              [--tls | --tls-ca F] [--tls-cert F --tls-key F]  (auth/tls_credentials.h)
//              [--token-file F] [--metrics-token-file F]         (auth/bearer_token.h)
//              [--metrics-tls-cert F --metrics-tls-key F]
//              [--confine-writes auto|on|off] [--trainer-writable DIRS]  (fs_confinement.h)
//              [--confine-reads off|on] [--trainer-readable DIRS]
//
// Prints "tern-agent metrics on HOST:PORT" as its first stdout line (the
// bound port, useful with --metrics-listen :0). SIGINT/SIGTERM drain the
// agent (agent.h): every trainer stops at a checkpoint (SIGUSR1, SIGKILL
// after --shutdown-grace), the lease ends, exit 0. A second SIGINT/SIGTERM
// stops the trainers at once.
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common/http_server.h"
#include "common/logging.h"
#include "auth/bearer_token.h"
#include "auth/tls_credentials.h"
#include "auth/tls_flags.h"
#include "worker/agent/agent.h"

namespace {

namespace fs = std::filesystem;

bool IsExecutable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

// `name` on $PATH, or "".
std::string SearchPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  std::string dirs = path;
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const fs::path candidate = fs::path(dirs.substr(start, end - start)) / name;
    if (end > start && IsExecutable(candidate)) return fs::absolute(candidate).string();
    start = end + 1;
  }
  return "";
}

// --trainer if given (a bare name is looked up on $PATH); else tern-trainer
// next to this binary, then ../trainer/tern-trainer (the build tree), then
// on $PATH. "" when none exists.
std::string FindTrainer(const std::string& flag) {
  if (!flag.empty()) {
    if (flag.find('/') == std::string::npos) return SearchPath(flag);
    return IsExecutable(flag) ? fs::absolute(flag).string() : "";
  }
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p : {self.parent_path() / "tern-trainer",
                              self.parent_path() / ".." / "trainer" / "tern-trainer"}) {
      if (IsExecutable(p)) return fs::weakly_canonical(p, ec).string();
    }
  }
  return SearchPath("tern-trainer");
}

std::string DefaultAgentId() {
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "agent");
  std::string id;
  for (const char* c = host; *c; ++c) {
    id += (std::isalnum(static_cast<unsigned char>(*c)) || *c == '-' || *c == '_' || *c == '.')
              ? *c : '-';
  }
  return id.substr(0, 100) + "-" + std::to_string(::getpid());
}

// Empty when `host` resolves to an address this machine can bind (a TCP
// socket on port 0), else why not: the trainers' Gloo listens there.
std::string CannotBind(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), "0", &hints, &found); rc != 0) {
    return gai_strerror(rc);
  }
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const bool bound = ::bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    why = bound ? "" : std::strerror(errno);
    ::close(fd);
    if (bound) break;
  }
  ::freeaddrinfo(found);
  return why;
}

}  // namespace

int main(int argc, char** argv) {
  tern::agent::AgentOptions options;
  std::string server = "127.0.0.1:7070";
  std::string trainer_flag;
  std::string metrics_listen = "127.0.0.1:9465";
  std::string metrics_token_file;
  std::string metrics_tls_cert, metrics_tls_key;
  double grace_s = 20.0;
  double rpc_timeout_s = 5.0;
  tern::tls::ClientTlsOptions tls;

  CLI::App app("tern-agent: runs tern-trainer processes for ternd on this machine");
  app.add_option("--server", server, "ternd's address, HOST:PORT")
      ->envname("TERN_SERVER")
      ->capture_default_str();
  app.add_option("--agent-id", options.agent_id,
                 "stable identity, [A-Za-z0-9_.-]{1,128} (default: the --tls-cert "
                 "certificate's common name, else hostname-pid)");
  app.add_option("--host", options.host,
                 "address of this machine that other machines reach it at: ternd gives it to "
                 "the other ranks of a job whose rank 0 runs here, and every trainer here "
                 "listens for its peers on it (TERN_BIND_ADDR); on several machines, not a "
                 "loopback address")
      ->capture_default_str();
  app.add_option("--cpu-slots", options.cpu_slots, "CPU ranks to run at once")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--cuda-slots", options.cuda_slots, "GPUs to run ranks on (one rank each)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--trainer", trainer_flag,
                 "tern-trainer executable (default: next to tern-agent, then "
                 "../trainer/tern-trainer, then $PATH)");
  app.add_option("--workdir", options.workdir,
                 "directory for job files (default: $TMPDIR/tern-agent-<agent-id>)");
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT of the /metrics endpoint (:0 picks a port; empty disables)")
      ->capture_default_str();
  app.add_option("--metrics-token-file", metrics_token_file,
                 "file holding the bearer token /metrics requires (Prometheus: authorization "
                 "credentials_file); re-read when it changes");
  app.add_option("--metrics-tls-cert", metrics_tls_cert,
                 "PEM certificate (chain): serve /metrics over HTTPS (with --metrics-tls-key)");
  app.add_option("--metrics-tls-key", metrics_tls_key, "PEM private key of --metrics-tls-cert");
  app.add_option("--shutdown-grace", grace_s,
                 "seconds trainers get to checkpoint and exit on shutdown (keep it below the "
                 "pod's terminationGracePeriodSeconds), or to exit on a lost lease, before SIGKILL")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--rpc-timeout", rpc_timeout_s, "deadline of each call to ternd, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  std::string confine_writes = "auto";
  app.add_option("--confine-writes", confine_writes,
                 "Landlock-confine the writes of trainers whose job has path roots (ternd "
                 "--write-roots): auto (where the kernel offers it), on (refuse such ranks "
                 "where not), off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  app.add_option("--trainer-writable", options.trainer_writable,
                 "further directories confined trainers may write beneath (repeatable or "
                 "comma-separated; e.g. a CUDA cache)")
      ->delimiter(',');
  std::string confine_reads = "off";
  app.add_option("--confine-reads", confine_reads,
                 "Landlock-confine the reads of those trainers too: on (to their data roots, "
                 "rank, checkpoint and artifact directories, the system's directories, the "
                 "trainer's own directory and --trainer-readable; refuse such ranks without "
                 "Landlock), off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("--trainer-readable", options.trainer_readable,
                 "with --confine-reads on: further paths confined trainers may read beneath "
                 "(repeatable or comma-separated; e.g. a LibTorch or CUDA install outside /usr "
                 "and /opt)")
      ->delimiter(',');
  tern::tls::AddClientTlsFlags(app, &tls);
  app.add_option("--tls-reload-interval", tls.reload_interval_s,
                 "seconds between re-reads of the --tls-* files (with --tls-ca; 0: read once)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  options.confine_writes = confine_writes == "on"    ? tern::agent::AgentOptions::ConfineWrites::kOn
                           : confine_writes == "off" ? tern::agent::AgentOptions::ConfineWrites::kOff
                                                     : tern::agent::AgentOptions::ConfineWrites::kAuto;
  options.confine_reads = confine_reads == "on" ? tern::agent::AgentOptions::ConfineReads::kOn
                                                : tern::agent::AgentOptions::ConfineReads::kOff;
  options.secret_files = {{"--tls-key", tls.key_file},
                          {"--token-file", tls.token_file},
                          {"--metrics-tls-key", metrics_tls_key},
                          {"--metrics-token-file", metrics_token_file}};

  // Signals are taken by a sigwait thread; block them before any thread
  // starts so every thread inherits the mask (trainers get a clean one).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (options.agent_id.empty() && !tls.cert_file.empty()) {
    // Over mutual TLS ternd accepts only the certificate's name as agent_id.
    auto name = tern::tls::CertificateCommonName("--tls-cert", tls.cert_file);
    if (!name.ok()) {
      std::cerr << "tern-agent: " << name.status().message() << "\n";
      return 2;
    }
    options.agent_id = *name;
  }
  if (options.agent_id.empty()) options.agent_id = DefaultAgentId();
  if (options.workdir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    options.workdir = std::string(tmp && *tmp ? tmp : "/tmp") + "/tern-agent-" + options.agent_id;
  }
  options.workdir = fs::absolute(options.workdir).string();
  options.trainer_path = FindTrainer(trainer_flag);
  if (options.trainer_path.empty()) {
    std::cerr << "tern-agent: no tern-trainer found"
              << (trainer_flag.empty() ? " (pass --trainer PATH)" : " at " + trainer_flag) << "\n";
    return 2;
  }
  options.shutdown_grace = std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
  options.rpc_timeout = std::chrono::milliseconds(static_cast<int64_t>(rpc_timeout_s * 1000));
  if (tern::Status s = options.Validate(); !s.ok()) {
    std::cerr << "tern-agent: " << s << "\n";
    return 2;
  }

  auto channel = tern::tls::MakeChannel(server, tls);
  if (!channel.ok()) {
    std::cerr << "tern-agent: " << channel.status().message() << "\n";
    return 2;
  }
  tern::metrics::Registry registry;
  tern::agent::Agent agent(options, *channel, &registry);
  std::unique_ptr<tern::metrics::MetricsHttpServer> http;
  if (!metrics_listen.empty()) {
    http = std::make_unique<tern::metrics::MetricsHttpServer>(metrics_listen, &registry);
    if (!metrics_tls_cert.empty() || !metrics_tls_key.empty()) {
      if (metrics_tls_cert.empty() || metrics_tls_key.empty()) {
        std::cerr << "tern-agent: --metrics-tls-cert and --metrics-tls-key go together\n";
        return 2;
      }
      if (tern::Status s = http->UseTls(metrics_tls_cert, metrics_tls_key); !s.ok()) {
        std::cerr << "tern-agent: " << s.message() << "\n";
        return 2;
      }
    }
    if (!metrics_token_file.empty()) {
      auto token = tern::tls::TokenFile::Open("--metrics-token-file", metrics_token_file);
      if (!token.ok()) {
        std::cerr << "tern-agent: " << token.status().message() << "\n";
        return 2;
      }
      http->RequireBearerToken([token = *token](std::string_view presented) {
        return token->Matches(presented);
      });
    }
    if (tern::Status s = http->Start(); !s.ok()) {
      std::cerr << "tern-agent: --metrics-listen " << metrics_listen << ": " << s << "\n";
      return 2;
    }
    const std::string host = metrics_listen.substr(0, metrics_listen.rfind(':'));
    std::cout << "tern-agent metrics on " << (host.empty() ? "0.0.0.0" : host) << ":"
              << http->port() << std::endl;
  }
  TERN_LOG(INFO) << "agent " << options.agent_id << " for " << server << ", advertising "
                 << options.host << ", trainer " << options.trainer_path << ", workdir "
                 << options.workdir;
  if (const std::string why = CannotBind(options.host); !why.empty()) {
    TERN_LOG(WARNING) << "--host " << options.host << " is not an address of this machine ("
                      << why << "): its trainers cannot listen for their peers there and "
                      << "every job with ranks here will fail; advertise this machine's own "
                      << "address";
  }

  std::atomic<bool> ran{false};
  std::thread signals([&] {
    // The first signal drains; a second stops the trainers at once.
    for (int received = 0; !ran.load();) {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      if (ran.load()) break;
      const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
      if (++received == 1) {
        TERN_LOG(INFO) << "received " << name << "; draining (again to stop trainers at once)";
        agent.Shutdown();
      } else {
        TERN_LOG(WARNING) << "received " << name << " again; stopping trainers at once";
        agent.StopTrainersNow();
      }
    }
  });
  const tern::Status status = agent.Run();
  if (!status.ok()) std::cerr << "tern-agent: " << status << "\n";
  // Wake the signal thread: Run returned (on a signal or on its own).
  ran.store(true);
  pthread_kill(signals.native_handle(), SIGTERM);
  signals.join();
  if (http) http->Stop();
  return status.ok() ? 0 : 1;
}
