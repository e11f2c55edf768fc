#include "worker/trainer/running_statistics.h"

#include <torch/torch.h>

#include "worker/trainer/distributed.h"

namespace tern::trainer {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsStatistic(const std::string& name) {
  return EndsWith(name, "running_mean") || EndsWith(name, "running_var");
}

}  // namespace

RunningStatistics::RunningStatistics(const torch::nn::Module& model) {
  std::vector<std::string> counter_names;
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (IsStatistic(item.key()) && item.value().is_floating_point()) {
      stats_.push_back(item.value());
      names_.push_back(item.key());
    } else if (EndsWith(item.key(), "num_batches_tracked")) {
      counters_.push_back(item.value());
      counter_names.push_back(item.key());
    }
  }
  names_.insert(names_.end(), counter_names.begin(), counter_names.end());
}

void RunningStatistics::BeginMicroBatches(int micro) {
  micro_ = micro;
  if (micro_ <= 1) return;
  torch::NoGradGuard no_grad;
  const size_t n = stats_.size() + counters_.size();
  if (start_.size() != n) {
    start_.clear();
    for (const at::Tensor& t : stats_) start_.push_back(t.clone());
    for (const at::Tensor& t : counters_) start_.push_back(t.clone());
    sum_.clear();
    for (const at::Tensor& t : stats_) sum_.push_back(at::empty_like(t));
    return;
  }
  for (size_t i = 0; i < stats_.size(); ++i) start_[i].copy_(stats_[i]);
  for (size_t i = 0; i < counters_.size(); ++i) start_[stats_.size() + i].copy_(counters_[i]);
}

void RunningStatistics::EndMicroBatch(int m) {
  if (micro_ <= 1) return;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < stats_.size(); ++i) {
    // The sum in micro-batch order, then one division: for 2 micro-batches
    // bit for bit what a 2-rank all-reduce mean computes ((a + b) / 2).
    if (m == 0) {
      sum_[i].copy_(stats_[i]);
    } else {
      sum_[i].add_(stats_[i]);
    }
  }
  if (m + 1 < micro_) {
    // The next micro-batch starts from the step's values again.
    for (size_t i = 0; i < stats_.size(); ++i) stats_[i].copy_(start_[i]);
    for (size_t i = 0; i < counters_.size(); ++i) counters_[i].copy_(start_[stats_.size() + i]);
    return;
  }
  // The last one: the mean of the results; the counters moved once, from
  // the step's values (restored before this forward).
  for (size_t i = 0; i < stats_.size(); ++i) stats_[i].copy_(sum_[i].div_(micro_));
}

StatusOr<int64_t> ReestimateBatchNorm(torch::nn::Module& model, RunningStatistics& stats,
                                      Communicator* comm,
                                      const std::function<StatusOr<int64_t>()>& forward) {
  std::vector<torch::nn::BatchNorm2dImpl*> norms;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* bn = m->as<torch::nn::BatchNorm2dImpl>()) {
      if (bn->options.track_running_stats()) norms.push_back(bn);
    }
  }
  std::vector<at::Tensor> saved;  // stats.averaged(), then counters()
  std::vector<c10::optional<double>> momenta;
  {
    torch::NoGradGuard no_grad;
    for (const at::Tensor& t : stats.averaged()) saved.push_back(t.clone());
    for (const at::Tensor& t : stats.counters()) saved.push_back(t.clone());
    for (auto* bn : norms) {
      momenta.push_back(bn->options.momentum());
      bn->options.momentum(c10::nullopt);  // cumulative average over the batches
      bn->reset_running_stats();
    }
  }
  const bool was_training = model.is_training();
  model.train();
  StatusOr<int64_t> ran = forward();
  model.train(was_training);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < norms.size(); ++i) norms[i]->options.momentum(momenta[i]);
  const size_t n = stats.averaged().size();
  for (size_t i = 0; i < stats.counters().size(); ++i) stats.counters()[i].copy_(saved[n + i]);
  Status reduced = ran.ok() && comm != nullptr ? comm->AllReduceMean(stats.averaged()) : OkStatus();
  if (!ran.ok() || !reduced.ok()) {
    for (size_t i = 0; i < n; ++i) stats.averaged()[i].copy_(saved[i]);
    if (!ran.ok()) return ran.status();
    return reduced;
  }
  return ran;
}

}  // namespace tern::trainer
