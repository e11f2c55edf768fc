// Communicator: the data-parallel collectives one trainer rank needs, over a
// c10d process group (Gloo on CPU, NCCL on CUDA) with a TCPStore rendezvous
// hosted by rank 0.
//
// At world size 1 no process group is created (unless `connect_alone`) and
// every collective is a no-op, so the training loop has no branches for it.
// Collectives block until done or until the timeout; a timeout or a lost peer
// returns an UNAVAILABLE / DEADLINE_EXCEEDED status naming the operation
// instead of hanging. Not thread-safe: call from the training thread.
#ifndef TERN_WORKER_TRAINER_DISTRIBUTED_H_
#define TERN_WORKER_TRAINER_DISTRIBUTED_H_

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

struct DistributedOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";   // rank 0's host (TCPStore)
  int master_port = 29500;                 // TCPStore port on rank 0
  std::string backend = "gloo";            // gloo, nccl
  std::chrono::milliseconds timeout{300000};  // rendezvous and collectives
  int64_t bucket_bytes = 25 << 20;         // gradient all-reduce bucket size
  bool connect_alone = false;              // build a group even at size 1
  // Shared secret of the job's ranks ("" none): every key of the rendezvous
  // store is prefixed with it (c10d PrefixStore), so a process without it
  // can neither read the peers' addresses or NCCL's unique id from rank 0's
  // store nor write into the job's keys; ranks with different keys never
  // meet (the rendezvous times out). Printable ASCII, at most 128 bytes.
  std::string rendezvous_key;
  // This host's address as its agent advertises it to the other ranks
  // (tern-agent --host): Gloo listens there and tells the peers to dial it.
  // Empty: TERN_BIND_ADDR from the environment (tern-agent sets it for every
  // rank), else 127.0.0.1 when master_addr is a loopback address, else the
  // address of this machine's hostname (Gloo's default, which resolves to a
  // loopback address on many machines). TERN_GLOO_IFNAME=<interface>
  // overrides all of these. Rank 0's TCPStore listens on every interface
  // whatever this says: LibTorch 1.13's TCPStore has no listen address
  // (docs/SECURITY.md).
  std::string bind_addr;

  Status Validate() const;
};

class Communicator {
 public:
  // Rendezvous: blocks until all ranks joined or `timeout` passed.
  static StatusOr<std::unique_ptr<Communicator>> Connect(const DistributedOptions& options);
  ~Communicator();

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  const std::string& backend() const { return options_.backend; }
  // Whether a process group exists (world size > 1, or connect_alone).
  bool connected() const { return group_ != nullptr; }

  // Averages the tensors over ranks in place, packed into buckets of at most
  // bucket_bytes, all buckets in flight at once. Undefined tensors skipped;
  // integer tensors are INVALID_ARGUMENT (a mean needs floating point).
  Status AllReduceMean(const std::vector<at::Tensor>& tensors);
  // Sums one tensor over ranks in place.
  Status AllReduceSum(const at::Tensor& tensor);
  // Copies `root`'s values into every rank's tensors, in place.
  Status Broadcast(const std::vector<at::Tensor>& tensors, int root);
  Status Barrier();

 private:
  struct Group;
  explicit Communicator(DistributedOptions options);
  Status Run(const char* what, const std::function<void()>& body);

  DistributedOptions options_;
  std::unique_ptr<Group> group_;
};

// Connect's ALREADY_EXISTS when rank 0 could not listen on master_port
// because another process holds it (tern-trainer exits
// kExitRendezvousPortInUse; ternd retries on another port).
bool IsRendezvousPortInUse(const Status& status);

// Whether `status` is a failed collective of a Communicator (a peer gone or
// unreachable), with or without context added since; tern-trainer exits
// kExitCollectiveFailed for it.
bool IsCollectiveFailure(const Status& status);

// A TCP port on 127.0.0.1 that is free now (for tests and local launches), picked below the kernel's
// ephemeral range so that no port-0 listener or outgoing connection can take it before the caller binds,
// and outside ternd's default rendezvous range (common/ports.h).
StatusOr<int> PickFreePort();

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_DISTRIBUTED_H_
