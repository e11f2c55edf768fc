#include "worker/trainer/distributed.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "common/ports.h"

namespace tern::trainer {
namespace {

// Connects two Gloo ranks, one thread each, over loopback
// (rendezvous_keys: each rank's DistributedOptions::rendezvous_key) and runs
// `body` on each that connected. Returns each rank's Connect status.
std::array<Status, 2> ConnectTwoRanks(const std::function<void(Communicator&)>& body,
                                      std::chrono::milliseconds timeout,
                                      const std::array<std::string, 2>& rendezvous_keys) {
  std::array<Status, 2> connected;
  auto port = PickFreePort();
  EXPECT_TRUE(port.ok());
  if (!port.ok()) return {port.status(), port.status()};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      DistributedOptions o;
      o.rank = rank;
      o.world_size = 2;
      o.master_port = *port;
      o.timeout = timeout;
      o.bucket_bytes = 64;  // force several buckets
      o.rendezvous_key = rendezvous_keys[rank];
      auto comm = Communicator::Connect(o);
      connected[rank] = comm.status();
      if (comm.ok()) body(**comm);
    });
  }
  for (auto& t : threads) t.join();
  return connected;
}

// Runs `body(rank)` on two connected Gloo ranks.
void RunTwoRanks(const std::function<void(Communicator&)>& body,
                 std::chrono::milliseconds timeout = std::chrono::seconds(30),
                 const std::array<std::string, 2>& rendezvous_keys = {}) {
  for (const Status& status : ConnectTwoRanks(body, timeout, rendezvous_keys)) {
    EXPECT_TRUE(status.ok()) << status;
  }
}

TEST(CommunicatorTest, AllReduceMeanAveragesEveryBucket) {
  RunTwoRanks([](Communicator& comm) {
    const float r = static_cast<float>(comm.rank());
    std::vector<at::Tensor> tensors = {torch::full({5, 7}, r), torch::full({33}, 2 * r),
                                       at::Tensor(), torch::full({1}, 10 + r)};
    ASSERT_TRUE(comm.AllReduceMean(tensors).ok());
    EXPECT_TRUE(torch::allclose(tensors[0], torch::full({5, 7}, 0.5f)));
    EXPECT_TRUE(torch::allclose(tensors[1], torch::full({33}, 1.0f)));
    EXPECT_TRUE(torch::allclose(tensors[3], torch::full({1}, 10.5f)));
  });
}

TEST(CommunicatorTest, BroadcastCopiesRootValues) {
  RunTwoRanks([](Communicator& comm) {
    at::Tensor t = torch::full({4, 4}, static_cast<float>(comm.rank() + 1));
    ASSERT_TRUE(comm.Broadcast({t}, 0).ok());
    EXPECT_TRUE(torch::equal(t, torch::ones({4, 4})));
    ASSERT_TRUE(comm.Barrier().ok());
  });
}

// Model parameters are leaves that require grad, and channels_last ones (the
// CUDA default) are not contiguous: the broadcast goes through a buffer and
// writes back without autograd complaining about an in-place op on a leaf.
TEST(CommunicatorTest, BroadcastWritesChannelsLastParametersThatRequireGrad) {
  RunTwoRanks([](Communicator& comm) {
    at::Tensor p = torch::full({4, 3, 2, 2}, static_cast<float>(comm.rank() + 1))
                       .contiguous(at::MemoryFormat::ChannelsLast)
                       .requires_grad_();
    ASSERT_FALSE(p.is_contiguous());
    const Status broadcast = comm.Broadcast({p}, 0);
    ASSERT_TRUE(broadcast.ok()) << broadcast;
    EXPECT_TRUE(torch::equal(p.detach(), torch::ones({4, 3, 2, 2})));
    EXPECT_TRUE(p.requires_grad());
    ASSERT_TRUE(comm.Barrier().ok());
  });
}

// Many tensors go in a few packed broadcasts (buckets of one dtype, at most
// bucket_bytes each: 64 here): each lands whole and in place, whatever its
// dtype, shape or memory format, from any root.
TEST(CommunicatorTest, BroadcastPacksTensorsOfEveryDtypeAndLayout) {
  RunTwoRanks([](Communicator& comm) {
    const int root = 1;
    const bool sender = comm.rank() == root;
    auto values = [&](at::Tensor t, int64_t base) {
      return sender ? t.copy_(torch::arange(base, base + t.numel()).view(t.sizes())) : t.zero_();
    };
    at::Tensor a = values(torch::empty({3, 5}), 0);
    at::Tensor b = values(torch::empty({7}, at::kLong), 100);  // e.g. num_batches_tracked
    at::Tensor c = values(torch::empty({2, 3, 2, 2}), 200).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor d = values(torch::empty({40}, at::kDouble), 300);
    at::Tensor e = values(torch::empty({1}), 400);
    const Status broadcast = comm.Broadcast({a, b, at::Tensor(), c, d, e}, root);
    ASSERT_TRUE(broadcast.ok()) << broadcast;
    EXPECT_TRUE(torch::equal(a, torch::arange(0, 15).view({3, 5}).to(at::kFloat)));
    EXPECT_TRUE(torch::equal(b, torch::arange(100, 107)));
    EXPECT_FALSE(c.is_contiguous());
    EXPECT_TRUE(torch::equal(c.contiguous(), torch::arange(200, 224).view({2, 3, 2, 2}).to(at::kFloat)));
    EXPECT_TRUE(torch::equal(d, torch::arange(300, 340).to(at::kDouble)));
    EXPECT_TRUE(torch::equal(e, torch::full({1}, 400.0f)));
    ASSERT_TRUE(comm.Barrier().ok());
  });
}

// Ranks that share a rendezvous key meet in the keys it prefixes; ranks
// with different keys (a stray or foreign process on the port) never do.
TEST(CommunicatorTest, OnlyRanksWithTheSameRendezvousKeyMeet) {
  RunTwoRanks(
      [](Communicator& comm) {
        at::Tensor t = torch::full({3}, static_cast<float>(comm.rank()));
        ASSERT_TRUE(comm.AllReduceMean({t}).ok());
        EXPECT_TRUE(torch::allclose(t, torch::full({3}, 0.5f)));
      },
      std::chrono::seconds(30), {"0123456789abcdef", "0123456789abcdef"});

  const std::array<Status, 2> strangers = ConnectTwoRanks(
      [](Communicator&) { ADD_FAILURE() << "ranks with different keys met"; },
      std::chrono::seconds(3), {"key-of-the-job", "another-key"});
  EXPECT_FALSE(strangers[0].ok());
  EXPECT_FALSE(strangers[1].ok());

  DistributedOptions bad;
  bad.rendezvous_key = "has space";
  EXPECT_EQ(bad.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(CommunicatorTest, WorldSizeOneIsANoOp) {
  auto comm = Communicator::Connect(DistributedOptions());
  ASSERT_TRUE(comm.ok());
  at::Tensor t = torch::ones({3});
  EXPECT_TRUE((*comm)->AllReduceMean({t}).ok());
  EXPECT_TRUE(torch::equal(t, torch::ones({3})));
}

// Whether a TCP socket of this network namespace in state `state` (hex, as
// in /proc/net/tcp: 01 established) has local address `ip`.
bool HasTcpSocket(const std::string& ip, const char* state) {
  in_addr addr{};
  if (::inet_pton(AF_INET, ip.c_str(), &addr) != 1) return false;
  char local[16];
  std::snprintf(local, sizeof local, "%08X:", addr.s_addr);  // the kernel's byte order
  std::ifstream in("/proc/self/net/tcp");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local_address, remote_address, st;
    fields >> slot >> local_address >> remote_address >> st;
    if (local_address.rfind(local, 0) == 0 && st == state) return true;
  }
  return false;
}

// Two ranks whose agents advertise 127.0.0.2 and 127.0.0.3 (every 127/8
// address is this machine's): Gloo's connection between them runs to one of
// those addresses, not to the hostname's (Gloo's pairs stop listening once
// connected).
TEST(CommunicatorTest, EachRankIsDialedOnItsBindAddress) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  const std::array<std::string, 2> addresses = {"127.0.0.2", "127.0.0.3"};
  std::array<Status, 2> result;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      DistributedOptions o;
      o.rank = rank;
      o.world_size = 2;
      o.master_port = *port;
      o.bind_addr = addresses[rank];
      o.timeout = std::chrono::seconds(30);
      auto comm = Communicator::Connect(o);
      result[rank] = comm.status();
      if (!comm.ok()) return;
      at::Tensor t = torch::full({4}, static_cast<float>(rank + 1));
      result[rank] = (*comm)->AllReduceSum(t);
      if (result[rank].ok() && t[0].item<float>() != 3.0f) result[rank] = InternalError("sum");
      // Gloo's pair is connected (the barrier below keeps both ends open):
      // one rank dialed the other's bind address, and that end of the
      // connection is there.
      if (result[rank].ok() && !HasTcpSocket("127.0.0.2", "01") &&
          !HasTcpSocket("127.0.0.3", "01")) {
        result[rank] = InternalError("no connection on 127.0.0.2 or 127.0.0.3");
      }
      const Status barrier = (*comm)->Barrier();
      if (result[rank].ok()) result[rank] = barrier;
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : result) EXPECT_TRUE(s.ok()) << s;
}

// tern-agent passes its advertised host in TERN_BIND_ADDR.
TEST(CommunicatorTest, TheBindAddressComesFromTernBindAddr) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  ASSERT_EQ(::setenv("TERN_BIND_ADDR", "127.0.0.4", 1), 0);
  std::array<Status, 2> result;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      DistributedOptions o;
      o.rank = rank;
      o.world_size = 2;
      o.master_port = *port;
      o.timeout = std::chrono::seconds(30);
      auto comm = Communicator::Connect(o);
      result[rank] = comm.status();
      if (!comm.ok()) return;
      if (!HasTcpSocket("127.0.0.4", "01")) result[rank] = InternalError("no connection on 127.0.0.4");
      const Status barrier = (*comm)->Barrier();
      if (result[rank].ok()) result[rank] = barrier;
    });
  }
  for (auto& t : threads) t.join();
  ::unsetenv("TERN_BIND_ADDR");
  for (const Status& s : result) EXPECT_TRUE(s.ok()) << s;
}

// An address this machine does not have (the agent advertises the wrong
// one) fails at once, naming it, not after the rendezvous timeout.
TEST(CommunicatorTest, ABindAddressNotOnThisMachineFailsAtOnceNamingIt) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  for (int rank : {0, 1}) {
    DistributedOptions o;
    o.rank = rank;
    o.world_size = 2;
    o.master_port = *port;
    o.bind_addr = "192.0.2.1";  // TEST-NET-1: nobody's
    o.timeout = std::chrono::seconds(30);
    const auto start = std::chrono::steady_clock::now();
    auto comm = Communicator::Connect(o);
    ASSERT_FALSE(comm.ok());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    EXPECT_NE(comm.status().message().find("192.0.2.1"), std::string::npos) << comm.status();
  }
}

TEST(CommunicatorTest, MissingPeerFailsRendezvousWithinTimeout) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  DistributedOptions o;
  o.world_size = 2;
  o.master_port = *port;
  o.timeout = std::chrono::milliseconds(1500);
  const auto start = std::chrono::steady_clock::now();
  auto comm = Communicator::Connect(o);
  ASSERT_FALSE(comm.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_NE(comm.status().message().find("rendezvous"), std::string::npos) << comm.status();
  EXPECT_FALSE(IsCollectiveFailure(comm.status())) << comm.status();
}

// A collective whose peer left is a collective failure (tern-trainer exits
// kExitCollectiveFailed), also with context added; nothing else is.
TEST(CommunicatorTest, ACollectiveWhosePeerLeftIsACollectiveFailure) {
  RunTwoRanks(
      [](Communicator& comm) {
        if (comm.rank() == 1) return;  // closes its side of the pair
        const Status status = comm.AllReduceSum(torch::ones({4}));
        ASSERT_FALSE(status.ok());
        EXPECT_TRUE(IsCollectiveFailure(status)) << status;
        EXPECT_TRUE(IsCollectiveFailure(status.WithContext("step 7"))) << status;
        EXPECT_NE(status.message().find("failed on rank 0/2"), std::string::npos) << status;
      },
      std::chrono::milliseconds(3000));
  EXPECT_FALSE(IsCollectiveFailure(OkStatus()));
  EXPECT_FALSE(IsCollectiveFailure(UnavailableError("cannot stat /data: gone")));
  EXPECT_FALSE(IsCollectiveFailure(UnavailableError("x").WithMetadata("other", "y")));
}

// Rank 0 whose port another process holds says so (tern-trainer exits
// kExitRendezvousPortInUse and ternd picks another port), at once.
TEST(CommunicatorTest, RankZeroOnAHeldPortIsRendezvousPortInUse) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(*port));
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  DistributedOptions o;
  o.world_size = 2;
  o.master_port = *port;
  o.timeout = std::chrono::milliseconds(30000);
  const auto start = std::chrono::steady_clock::now();
  auto comm = Communicator::Connect(o);
  ::close(fd);
  ASSERT_FALSE(comm.ok());
  EXPECT_TRUE(IsRendezvousPortInUse(comm.status())) << comm.status();
  EXPECT_NE(comm.status().message().find(std::to_string(*port)), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  // Any other failure is not mistaken for it.
  EXPECT_FALSE(IsRendezvousPortInUse(UnavailableError("rendezvous failed")));
  EXPECT_FALSE(IsRendezvousPortInUse(AlreadyExistsError("something else")));
}

// ternd's default rendezvous range (common/ports.h) is never picked.
TEST(PickFreePortTest, AvoidsTheServicesRendezvousRange) {
  for (int i = 0; i < 200; ++i) {
    auto port = PickFreePort();
    ASSERT_TRUE(port.ok()) << port.status();
    EXPECT_FALSE(*port >= kDefaultRendezvousPortMin && *port <= kDefaultRendezvousPortMax) << *port;
  }
}

// Ports from the kernel's ephemeral range can be taken by any port-0 listener or outgoing connection (other
// tests' Gloo pairs) between the pick and the store's bind; picked ports stay below it.
TEST(PickFreePortTest, PicksBindablePortsBelowTheEphemeralRange) {
  int first_ephemeral = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> first_ephemeral;
  std::set<int> ports;
  for (int i = 0; i < 20; ++i) {
    auto port = PickFreePort();
    ASSERT_TRUE(port.ok()) << port.status();
    EXPECT_GE(*port, 1024);
    EXPECT_LT(*port, first_ephemeral);
    ports.insert(*port);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(*port));
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << *port;
    ::close(fd);
  }
  EXPECT_GT(ports.size(), 10u) << "picks should be spread out so that concurrent tests do not collide";
}

TEST(CommunicatorTest, RejectsBadOptions) {
  DistributedOptions o;
  o.rank = 2;
  o.world_size = 2;
  EXPECT_FALSE(Communicator::Connect(o).ok());
  o.rank = 0;
  o.backend = "mpi";
  EXPECT_FALSE(Communicator::Connect(o).ok());
}

}  // namespace
}  // namespace tern::trainer
