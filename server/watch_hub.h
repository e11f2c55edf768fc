// WatchHub: serves every open tern.v1.JobService.WatchJob stream with gRPC's
// callback API, so an open stream costs memory (its pending events), not a
// thread. One hub thread waits for the scheduler's events (WaitForEvents) and
// wakes the streams; each stream writes one event at a time and refills from
// the scheduler when its write completes.
//
// A stream replays the stored history from from_sequence, then follows new
// events, and ends with OK after the terminal state change (and, on
// success, the `finished` event that follows it); history_only ends after
// the events recorded when the call arrived. It ends with CANCELLED when the
// client goes away and UNAVAILABLE once ternd shuts down (Stop()).
// Each caller may hold at most `max_streams_per_caller` open streams: more
// are refused with RESOURCE_EXHAUSTED.
//
// Thread-safe. Stop() before the scheduler goes away.
#ifndef TERN_SERVER_WATCH_HUB_H_
#define TERN_SERVER_WATCH_HUB_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "common/status.h"
#include "scheduler/job.h"
#include "server/server_state.h"
#include "tern/v1/job_service.pb.h"

namespace tern::server {

class WatchStream;

class WatchHub {
 public:
  // `state` must outlive the hub; its scheduler too, until Stop() returned.
  WatchHub(ServerState* state, int max_streams_per_caller);
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  // A reactor for gRPC to drive: the stream of `job` (already authorized
  // for `owner`), or one that ends at once with RESOURCE_EXHAUSTED when the
  // owner holds too many streams, or UNAVAILABLE after Stop().
  grpc::ServerWriteReactor<v1::JobEvent>* Open(const v1::WatchJobRequest& request,
                                               const scheduler::Job& job,
                                               const std::string& owner);
  // A reactor that ends at once with `status` (e.g. the authorization's).
  grpc::ServerWriteReactor<v1::JobEvent>* Refuse(const Status& status);

  // Ends every open stream with UNAVAILABLE and stops the hub's thread.
  void Stop();

  size_t open_streams() const;

 private:
  friend class WatchStream;
  void Loop();
  void Remove(WatchStream* stream);  // from WatchStream::OnDone

  ServerState* const state_;
  const int max_streams_per_caller_;
  mutable std::mutex mu_;
  bool stopping_ = false;
  std::atomic<bool> stop_streams_{false};  // streams end with UNAVAILABLE
  std::unordered_map<WatchStream*, std::shared_ptr<WatchStream>> streams_;
  std::map<std::string, int> per_owner_;
  std::thread thread_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_WATCH_HUB_H_
