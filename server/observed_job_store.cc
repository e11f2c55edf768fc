#include "server/observed_job_store.h"

#include <utility>

namespace tern::server {

ObservedJobStore::ObservedJobStore(std::unique_ptr<scheduler::JobStore> inner,
                                   Observer observer)
    : inner_(std::move(inner)), observer_(std::move(observer)) {}

Status ObservedJobStore::CreateJob(
    const scheduler::Job& job, const std::vector<scheduler::JobEvent>& events) {
  TERN_RETURN_IF_ERROR(inner_->CreateJob(job, events));
  Notify(job, events);
  return OkStatus();
}

Status ObservedJobStore::UpdateJob(
    const scheduler::Job& job, const std::vector<scheduler::JobEvent>& events) {
  TERN_RETURN_IF_ERROR(inner_->UpdateJob(job, events));
  Notify(job, events);
  return OkStatus();
}

Status ObservedJobStore::Commit(const std::vector<scheduler::JobWrite>& writes) {
  TERN_RETURN_IF_ERROR(inner_->Commit(writes));
  for (const scheduler::JobWrite& w : writes) Notify(w.job, w.events);
  return OkStatus();
}

StatusOr<std::vector<scheduler::Job>> ObservedJobStore::LoadJobs() {
  return inner_->LoadJobs();
}

StatusOr<scheduler::JobId> ObservedJobStore::HighestJobIdEver() {
  return inner_->HighestJobIdEver();
}

StatusOr<std::vector<scheduler::JobEvent>> ObservedJobStore::ReadEvents(
    scheduler::JobId job, int64_t after_seq, int limit) {
  return inner_->ReadEvents(job, after_seq, limit);
}

void ObservedJobStore::Notify(
    const scheduler::Job& job,
    const std::vector<scheduler::JobEvent>& events) const {
  if (!observer_) return;
  for (const scheduler::JobEvent& event : events) observer_(job, event);
}

}  // namespace tern::server
