#include "worker/trainer/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
#include <unistd.h>

#ifdef TERN_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>

#include "common/logging.h"
#include "common/ports.h"

namespace tern::trainer {

#if TORCH_VERSION_MAJOR >= 2
using C10dGroup = c10d::Backend;        // LibTorch 2.x: a group's backend
#else
using C10dGroup = c10d::ProcessGroup;   // LibTorch 1.13
#endif

struct Communicator::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> pg;
};

Status DistributedOptions::Validate() const {
  if (world_size < 1) return InvalidArgumentError("world_size: must be >= 1");
  if (rank < 0 || rank >= world_size) {
    return InvalidArgumentError("rank: must be in [0, world_size)");
  }
  if (master_port < 1 || master_port > 65535) {
    return InvalidArgumentError("master_port: must be in [1, 65535]");
  }
  if (backend != "gloo" && backend != "nccl") {
    return InvalidArgumentError("backend: must be gloo or nccl");
  }
#ifndef TERN_WITH_NCCL
  if (backend == "nccl") {
    return FailedPreconditionError("backend: this build has no NCCL (CPU LibTorch)");
  }
#endif
  if (timeout.count() <= 0) return InvalidArgumentError("timeout: must be > 0");
  if (rendezvous_key.size() > 128 ||
      !std::all_of(rendezvous_key.begin(), rendezvous_key.end(),
                   [](char c) { return c > 0x20 && c < 0x7f; })) {
    return InvalidArgumentError(
        "rendezvous_key: at most 128 printable ASCII characters without spaces");
  }
  return OkStatus();
}

namespace {
constexpr char kPortInUseMessage[] = "rank 0 cannot listen on rendezvous port ";
// Metadata key marking a failed collective (its value: the operation).
constexpr char kCollectiveKey[] = "collective";
}  // namespace

bool IsCollectiveFailure(const Status& status) {
  return !status.ok() && status.details() != nullptr &&
         status.details()->metadata.count(kCollectiveKey) != 0;
}

bool IsRendezvousPortInUse(const Status& status) {
  return status.code() == StatusCode::kAlreadyExists &&
         status.message().rfind(kPortInUseMessage, 0) == 0;
}

namespace {

// An exception's message without the C++ backtrace that c10::Error::what()
// appends (dozens of frames that would fill a job's restart reason).
std::string MessageOf(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

}  // namespace

Communicator::Communicator(DistributedOptions options) : options_(std::move(options)) {}
Communicator::~Communicator() = default;

StatusOr<std::unique_ptr<Communicator>> Communicator::Connect(
    const DistributedOptions& options) {
  TERN_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Communicator> comm(new Communicator(options));
  if (options.world_size == 1 && !options.connect_alone) return comm;
  auto group = std::make_unique<Group>();
  // Gloo's device first: an address this machine cannot bind fails at once,
  // naming it, instead of after rank 0's store waited for every worker.
  std::shared_ptr<::gloo::transport::Device> gloo_device;
  if (options.backend == "gloo") {
    const char* ifname = std::getenv("TERN_GLOO_IFNAME");
    const char* env_bind = std::getenv("TERN_BIND_ADDR");
    const std::string bind_addr =
        !options.bind_addr.empty() ? options.bind_addr : env_bind != nullptr ? env_bind : "";
    std::string what;
    try {
      if (ifname != nullptr && *ifname != '\0') {
        what = std::string("interface ") + ifname + " (TERN_GLOO_IFNAME)";
        gloo_device = c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
      } else if (!bind_addr.empty()) {
        what = "this host's advertised address " + bind_addr;
        gloo_device = c10d::ProcessGroupGloo::createDeviceForHostname(bind_addr);
      } else if (options.master_addr.rfind("127.", 0) == 0 || options.master_addr == "localhost") {
        what = "127.0.0.1";
        gloo_device = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
      } else {
        what = "the address of this machine's hostname";
        gloo_device = c10d::ProcessGroupGloo::createDefaultDevice();
      }
    } catch (const std::exception& e) {
      return UnavailableError("rank " + std::to_string(options.rank) + "/" +
                              std::to_string(options.world_size) + " cannot listen for its peers on " +
                              what + ": " + MessageOf(e));
    }
  }
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = static_cast<size_t>(options.world_size);
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    group->store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options);
    if (!options.rendezvous_key.empty()) {
      group->store = c10::make_intrusive<c10d::PrefixStore>("tern/" + options.rendezvous_key,
                                                            group->store);
    }
    if (options.backend == "gloo") {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create();
      gloo_options->timeout = options.timeout;
      gloo_options->devices.push_back(gloo_device);
      group->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
          group->store, options.rank, options.world_size, gloo_options);
    } else {
#ifdef TERN_WITH_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout;
      group->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          group->store, options.rank, options.world_size, nccl_options);
#endif
    }
  } catch (const std::exception& e) {
    const std::string what = e.what();
    if (options.rank == 0 && group->store == nullptr &&
        (what.find("errno: 98") != std::string::npos ||
         what.find("Address already in use") != std::string::npos)) {
      return AlreadyExistsError(std::string(kPortInUseMessage) +
                                std::to_string(options.master_port) +
                                ": another process on this host holds it (" + what + ")");
    }
    return UnavailableError("rendezvous with " + options.master_addr + ":" +
                            std::to_string(options.master_port) + " as rank " +
                            std::to_string(options.rank) + "/" +
                            std::to_string(options.world_size) + " failed: " + what);
  }
  comm->group_ = std::move(group);
  return comm;
}

Status Communicator::Run(const char* what, const std::function<void()>& body) {
  if (!group_) return OkStatus();
  try {
    body();
  } catch (const std::exception& e) {
    const std::string message = std::string(what) + " failed on rank " +
                                std::to_string(options_.rank) + "/" +
                                std::to_string(options_.world_size) + " (timeout " +
                                std::to_string(options_.timeout.count() / 1000) +
                                " s): " + MessageOf(e);
    const std::string text = MessageOf(e);
    const bool timed_out =
        text.find("imed out") != std::string::npos || text.find("imeout") != std::string::npos;
    return (timed_out ? DeadlineExceededError(message) : UnavailableError(message))
        .WithMetadata(kCollectiveKey, what);
  }
  return OkStatus();
}

namespace {

// Tensors packed for one collective each: same dtype and device, at most
// `bucket_bytes` (a larger tensor gets a bucket of its own), flattened in
// logical order (reshape(-1) reads a channels_last tensor the way the copy
// back writes it).
struct Bucket {
  std::vector<at::Tensor> members;
  at::Tensor flat;
  c10::intrusive_ptr<c10d::Work> work;
};

std::vector<Bucket> PackBuckets(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  std::vector<Bucket> buckets;
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    if (buckets.empty() || bytes + size > bucket_bytes ||
        buckets.back().members.front().scalar_type() != t.scalar_type() ||
        buckets.back().members.front().device() != t.device()) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().members.push_back(t);
    bytes += size;
  }
  for (Bucket& b : buckets) {
    std::vector<at::Tensor> flat_views;
    for (const at::Tensor& t : b.members) flat_views.push_back(t.reshape({-1}));
    b.flat = at::cat(flat_views);
  }
  return buckets;
}

// Writes a bucket's flat values back into its member tensors.
void Unpack(const Bucket& b) {
  int64_t offset = 0;
  for (const at::Tensor& t : b.members) {
    t.copy_(b.flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

}  // namespace

Status Communicator::AllReduceMean(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.defined() && !t.is_floating_point()) {
      return InvalidArgumentError("AllReduceMean: integer tensor of shape " +
                                  std::to_string(t.numel()) + " elements");
    }
  }
  return Run("gradient all-reduce", [&] {
    at::NoGradGuard no_grad;
    // Every bucket launched before the first wait.
    std::vector<Bucket> buckets = PackBuckets(tensors, options_.bucket_bytes);
    for (Bucket& b : buckets) {
      std::vector<at::Tensor> io = {b.flat};
      b.work = group_->pg->allreduce(io);
      b.flat = io[0];
    }
    for (Bucket& b : buckets) {
      b.work->wait(options_.timeout);
      b.flat.div_(options_.world_size);
      Unpack(b);
    }
  });
}

Status Communicator::AllReduceSum(const at::Tensor& tensor) {
  return Run("all-reduce", [&] {
    std::vector<at::Tensor> io = {tensor};
    group_->pg->allreduce(io)->wait(options_.timeout);
  });
}

Status Communicator::Broadcast(const std::vector<at::Tensor>& tensors, int root) {
  return Run("broadcast", [&] {
    // Parameters are leaves that require grad: writing the received values
    // back must not be recorded by autograd.
    at::NoGradGuard no_grad;
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    // Packed like the all-reduce: one broadcast per bucket, all in flight at
    // once, not one per tensor (a model's hundred tensors cost a hundred
    // round trips, seconds each on a lossy link).
    std::vector<Bucket> buckets = PackBuckets(tensors, options_.bucket_bytes);
    for (Bucket& b : buckets) {
      std::vector<at::Tensor> io = {b.flat};
      b.work = group_->pg->broadcast(io, opts);
      b.flat = io[0];
    }
    for (Bucket& b : buckets) {
      b.work->wait(options_.timeout);
      if (options_.rank != root) Unpack(b);
    }
  });
}

Status Communicator::Barrier() {
  // An all-reduce of one element: Gloo and NCCL both honour the timeout.
  return Run("barrier", [&] {
    std::vector<at::Tensor> io = {at::zeros({1}, at::kFloat)};
    if (options_.backend == "nccl") io[0] = io[0].cuda();
    group_->pg->allreduce(io)->wait(options_.timeout);
  });
}

namespace {

// Binds 127.0.0.1:`port` (0: any) without listening; the bound port, or -1.
int BindLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t len = sizeof(addr);
  int bound = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    bound = ntohs(addr.sin_port);
  }
  ::close(fd);
  return bound;
}

// The first port of the kernel's ephemeral range (Linux default 32768).
int FirstEphemeralPort() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int first = 0;
  int last = 0;
  if (in >> first >> last && first > 1024 && first <= last) return first;
  return 32768;
}

}  // namespace

StatusOr<int> PickFreePort() {
  // The port is free now but only bound later by the caller. Ports the kernel
  // hands out by itself (listeners on port 0, the local end of every outgoing
  // connection; Gloo opens many) come from the ephemeral range, so a port
  // below it cannot be taken by them in between. A random start keeps
  // concurrent test processes apart.
  constexpr int kLowest = 20000;
  const int end = FirstEphemeralPort();
  if (end - kLowest >= 1000) {
    std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
    std::uniform_int_distribution<int> pick(kLowest, end - 1);
    for (int attempt = 0; attempt < 100; ++attempt) {
      const int candidate = pick(rng);
      if (candidate >= kDefaultRendezvousPortMin && candidate <= kDefaultRendezvousPortMax) {
        continue;  // ternd's: a test must not hold the service's ports
      }
      const int port = BindLoopback(candidate);
      if (port > 0) return port;
    }
  }
  const int port = BindLoopback(0);
  if (port <= 0) return UnavailableError("cannot bind a free port on 127.0.0.1");
  return port;
}

}  // namespace tern::trainer
