#include "server/standby_service.h"

#include "server/rpc.h"

namespace tern::server {
namespace {

// Finishes the call with `status` without reading its request.
class Refusal final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refusal(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerGenericBidiReactor* StandbyService::CreateReactor(
    grpc::GenericCallbackServerContext* /*context*/) {
  Status status = refusal_();
  if (status.ok()) status = UnavailableError("ternd is not serving yet; retry");
  return new Refusal(ToGrpcStatus(status));
}

}  // namespace tern::server
