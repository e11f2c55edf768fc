#include "worker/agent/agent_daemon.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "auth/metrics_endpoint.h"
#include "common/logging.h"
#include "failover/server_list.h"

namespace tern::agent {
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
              ? *c
              : '-';
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

StatusOr<std::unique_ptr<AgentDaemon>> AgentDaemon::Start(AgentDaemonOptions options) {
  AgentOptions& agent = options.agent;
  if (agent.agent_id.empty() && !options.tls.cert_file.empty()) {
    // Over mutual TLS ternd accepts only the certificate's name as agent_id.
    TERN_ASSIGN_OR_RETURN(agent.agent_id,
                          tls::CertificateCommonName("--tls-cert", options.tls.cert_file));
  }
  if (agent.agent_id.empty()) agent.agent_id = DefaultAgentId();
  if (agent.workdir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    agent.workdir = std::string(tmp && *tmp ? tmp : "/tmp") + "/tern-agent-" + agent.agent_id;
  }
  agent.workdir = fs::absolute(agent.workdir).string();
  agent.trainer_path = FindTrainer(options.trainer);
  if (agent.trainer_path.empty()) {
    return InvalidArgumentError("no tern-trainer found" + (options.trainer.empty()
                                                               ? " (pass --trainer PATH)"
                                                               : " at " + options.trainer));
  }
  TERN_RETURN_IF_ERROR(agent.Validate());
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> addresses,
                        failover::ParseServerAddresses("--server", options.server));
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<failover::ServerList> servers,
                        failover::ServerList::Create(addresses, [&](const std::string& address) {
                          return tls::MakeChannel(address, options.tls);
                        }));

  std::unique_ptr<AgentDaemon> daemon(new AgentDaemon(std::move(options)));
  const AgentDaemonOptions& o = daemon->options_;
  daemon->agent_ = std::make_unique<Agent>(o.agent, std::move(servers), &daemon->registry_);
  tls::MetricsEndpointNames names;
  names.listen = "--metrics-listen " + o.metrics_listen;
  names.token_file = "--metrics-token-file";
  names.tls = "--metrics-tls-cert and --metrics-tls-key";
  TERN_ASSIGN_OR_RETURN(daemon->http_,
                        tls::StartMetricsEndpoint({o.metrics_listen, o.metrics_token_file,
                                                   o.metrics_tls_cert, o.metrics_tls_key},
                                                  &daemon->registry_, names));
  TERN_LOG(INFO) << "agent " << o.agent.agent_id << " for " << o.server << ", advertising "
                 << o.agent.host << ", trainer " << o.agent.trainer_path << ", workdir "
                 << o.agent.workdir;
  if (const std::string why = CannotBind(o.agent.host); !why.empty()) {
    TERN_LOG(WARNING) << "--host " << o.agent.host << " is not an address of this machine (" << why
                      << "): its trainers cannot listen for their peers there and "
                      << "every job with ranks here will fail; advertise this machine's own "
                      << "address";
  }
  return daemon;
}

AgentDaemon::~AgentDaemon() = default;

Status AgentDaemon::Run() {
  const Status status = agent_->Run();
  if (http_) http_->Stop();
  return status;
}

std::string AgentDaemon::metrics_address() const {
  if (!http_) return "";
  const std::string host = options_.metrics_listen.substr(0, options_.metrics_listen.rfind(':'));
  return (host.empty() ? "0.0.0.0" : host) + ":" + std::to_string(http_->port());
}

}  // namespace tern::agent
