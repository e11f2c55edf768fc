// ServerList: the ternd addresses a client was given (ternctl and tern-agent
// --server A,B,C) and which one it calls now. Several ternd may share one
// store (docs/DEPLOY.md, "Several ternd"): one leads, the others answer every
// call UNAVAILABLE with reason NOT_LEADER and the leader's advertised address
// (ErrorInfo metadata "leader_address"; LEADERSHIP_LOST from a leader that
// just lost the lease). A client that lists them all follows that:
//   - NOT_LEADER / LEADERSHIP_LOST naming one of the listed addresses: that
//     one, at once; naming none, or an address not in the list: the next
//     listed address. An address that is not listed is never called: it
//     would get the caller's credentials (bearer token, client certificate)
//     without the operator having named it, and a pod's address is often
//     not reachable from where the client runs anyway.
//   - any other UNAVAILABLE (refused connection, a ternd shutting down): the
//     next address.
//   - after a whole round of the list without success, a growing delay
//     (100 ms doubling to 1 s), so that a client never spins while nobody
//     leads (the standby takes over within the lease TTL).
// With one address nothing changes except that NOT_LEADER is retried there
// after the same delays (a load balancer will route to the new leader), and
// so is any UNAVAILABLE after a NOT_LEADER, until the next success: a
// standby that takes over hands its port from its standby server to its
// leading one, a moment in which connections are refused.
//
// Usage:
//   TERN_ASSIGN_OR_RETURN(std::vector<std::string> addresses,
//                         ParseServerAddresses("--server", flag_value));
//   TERN_ASSIGN_OR_RETURN(std::shared_ptr<ServerList> servers,
//                         ServerList::Create(addresses, [&](const std::string& a) {
//                           return tls::MakeChannel(a, tls_options);
//                         }));
//   // One call, retried on the leader within its deadline:
//   grpc::Status s = servers->Call(deadline, [&](const ServerList::Target& t) {
//     grpc::ClientContext ctx;  ctx.set_deadline(deadline);
//     return Stub(t)->GetJob(&ctx, request, &job);
//   });
//   // Or a retry loop of the caller's own (streams, heartbeats):
//   ServerList::Target t = servers->Current();
//   ... call on t.channel ...
//   if (std::optional<milliseconds> wait = servers->OnFailure(t, status)) retry after *wait;
// Thread-safe: calls on several threads share the list and its position.
#ifndef TERN_FAILOVER_SERVER_LIST_H_
#define TERN_FAILOVER_SERVER_LIST_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "google/rpc/error_details.pb.h"

namespace tern::failover {

// "host:port[,host:port...]" (spaces around the commas allowed; a repeated
// address counts once). INVALID_ARGUMENT naming `flag` for an empty list or
// entry, or an entry without ":port".
StatusOr<std::vector<std::string>> ParseServerAddresses(std::string_view flag,
                                                        std::string_view text);

// What a failed call says about leadership: the server is not (or no longer)
// the leader (UNAVAILABLE, reason NOT_LEADER or LEADERSHIP_LOST), and the
// leader's address when it named one.
struct LeaderHint {
  bool not_leader = false;
  std::string leader_address;  // "" while nobody leads, or unknown
};
LeaderHint LeaderHintOf(const grpc::Status& status);

// The tern.v1 ErrorInfo (domain error_reason::kErrorDomain) among a failed
// call's details; nullopt when it carries none.
std::optional<google::rpc::ErrorInfo> TernErrorInfoOf(const grpc::Status& status);

class ServerList {
 public:
  using ChannelFactory =
      std::function<StatusOr<std::shared_ptr<grpc::Channel>>(const std::string& address)>;
  // The server a call goes to: its position in the list and its channel.
  struct Target {
    size_t index = 0;
    std::shared_ptr<grpc::ChannelInterface> channel;
  };

  // Makes every address' channel now (gRPC connects lazily); the factory's
  // error (bad TLS files, ...) as it is. INVALID_ARGUMENT for no address.
  static StatusOr<std::shared_ptr<ServerList>> Create(std::vector<std::string> addresses,
                                                      const ChannelFactory& make_channel);
  // One address with a channel made elsewhere (tests, embedders).
  static std::shared_ptr<ServerList> Single(std::string address,
                                            std::shared_ptr<grpc::ChannelInterface> channel);

  size_t size() const { return addresses_.size(); }
  const std::string& address(size_t index) const { return addresses_[index]; }
  const std::vector<std::string>& addresses() const { return addresses_; }
  const std::shared_ptr<grpc::ChannelInterface>& channel(size_t index) const {
    return channels_[index];
  }

  // The server to call now.
  Target Current() const;
  // A call to `used` failed with `status`: moves on as the header comment
  // says and returns how long to wait before calling Current() again, or
  // nullopt when the status is the server's answer (not a failover case:
  // handle it), or a plain UNAVAILABLE with a single address that has not
  // answered NOT_LEADER since the last success (the caller's own retries
  // apply). When another call already moved on, the move is not
  // repeated.
  std::optional<std::chrono::milliseconds> OnFailure(const Target& used,
                                                     const grpc::Status& status);
  // A call to `used` succeeded: the delays start small again.
  void OnSuccess(const Target& used);

  // Runs `call(target)` (returning grpc::Status) on Current() until it
  // succeeds, fails in a way OnFailure does not retry, or the next try would
  // start after `deadline`; returns the last status. Blocks (sleeps between
  // tries). `call` must make a fresh ClientContext per try.
  template <typename Call>
  grpc::Status Run(std::chrono::system_clock::time_point deadline, Call&& call) {
    for (;;) {
      const Target target = Current();
      const grpc::Status status = call(target);
      if (status.ok()) {
        OnSuccess(target);
        return status;
      }
      const std::optional<std::chrono::milliseconds> wait = OnFailure(target, status);
      if (!wait || std::chrono::system_clock::now() + *wait >= deadline) return status;
      std::this_thread::sleep_for(*wait);
    }
  }

 private:
  ServerList(std::vector<std::string> addresses,
             std::vector<std::shared_ptr<grpc::ChannelInterface>> channels)
      : addresses_(std::move(addresses)), channels_(std::move(channels)) {}
  std::chrono::milliseconds BackoffLocked() const;

  const std::vector<std::string> addresses_;
  const std::vector<std::shared_ptr<grpc::ChannelInterface>> channels_;
  mutable std::mutex mu_;
  size_t current_ = 0;  // guarded by mu_
  int failures_ = 0;    // guarded by mu_: failed calls since the last success
  // guarded by mu_: a single address answered NOT_LEADER since the last
  // success, so a refused connection is likely its takeover.
  bool takeover_ = false;
};

}  // namespace tern::failover

#endif  // TERN_FAILOVER_SERVER_LIST_H_
