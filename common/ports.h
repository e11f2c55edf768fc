// Ports tern uses by default. Header-only: ternd, tern-agent and the trainer
// (which must not link gRPC) share the numbers.
#ifndef TERN_COMMON_PORTS_H_
#define TERN_COMMON_PORTS_H_

namespace tern {

// ternd hands rank 0 of each attempt a rendezvous port (its c10d TCPStore)
// from this range, per agent (ternd's --rendezvous-port-min/max). Chosen
// clear of PyTorch's default 29500 (any torchrun on the node), Kubernetes'
// NodePort range 30000-32767, the kernel's ephemeral ports (32768 and up)
// and the ports in /etc/services. Test helpers that pick free ports
// (trainer::PickFreePort) stay outside it, so tests never take the service's.
inline constexpr int kDefaultRendezvousPortMin = 26400;
inline constexpr int kDefaultRendezvousPortMax = 26899;

}  // namespace tern

#endif  // TERN_COMMON_PORTS_H_
