// StandbyService: what a standby ternd serves on its gRPC port instead of
// tern.v1.JobService and tern.v1.WorkerService while another ternd leads
// (scheduler/leader_election.h): every call to any method it does not
// otherwise serve (health and reflection are registered beside it) is
// answered at once with the status `refusal` returns then, normally
// NotLeaderError (server/rpc.h) naming the current leader.
//
// Usage:
//   StandbyService standby([&] { return NotLeaderError(self, Leader()); });
//   builder.RegisterCallbackGenericService(&standby);
// Thread-safe; `refusal` is called on gRPC's threads, once per call, and
// must be quick.
#ifndef TERN_SERVER_STANDBY_SERVICE_H_
#define TERN_SERVER_STANDBY_SERVICE_H_

#include <grpcpp/generic/async_generic_service.h>

#include <functional>
#include <utility>

#include "common/status.h"

namespace tern::server {

class StandbyService final : public grpc::CallbackGenericService {
 public:
  explicit StandbyService(std::function<Status()> refusal) : refusal_(std::move(refusal)) {}

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

 private:
  std::function<Status()> refusal_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_STANDBY_SERVICE_H_
