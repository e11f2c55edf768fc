// RendezvousKeys: the secret each job attempt's ranks share
// (tern.v1.Assignment.rendezvous_key; the trainer prefixes its rendezvous
// store's keys with it, worker/trainer/distributed.h), so that a process
// without it cannot read the peers' addresses or NCCL's unique id from rank
// 0's store, nor join or disturb the job through it.
//
// A key is HMAC-SHA256(ternd's secret, "<job id>/<attempt>/<submit micros>"),
// first 128 bits as 32 lowercase hex characters: the same for every rank of
// an attempt, and again after a ternd restart (ranks assigned again then
// still meet their peers), different for every attempt. ternd's secret is 32
// random bytes kept as 64 hex characters in a file (default: next to the
// database, "<db>.rendezvous-key"), created with mode 0600 on first start.
// Thread-safe after Load.
#ifndef TERN_SERVER_RENDEZVOUS_KEY_H_
#define TERN_SERVER_RENDEZVOUS_KEY_H_

#include <cstdint>
#include <string>

#include "common/status.h"

namespace tern::server {

class RendezvousKeys {
 public:
  // Reads `path`, or creates it when missing. PERMISSION_DENIED when its
  // group or others may read or write it; DATA_LOSS when it does not hold
  // 64 hex characters; the file system's error otherwise.
  static StatusOr<RendezvousKeys> LoadOrCreate(const std::string& path);

  std::string ForAttempt(int64_t job_id, int attempt, int64_t submit_micros) const;

 private:
  explicit RendezvousKeys(std::string secret) : secret_(std::move(secret)) {}
  std::string secret_;  // 32 bytes
};

}  // namespace tern::server

#endif  // TERN_SERVER_RENDEZVOUS_KEY_H_
