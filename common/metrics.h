// Prometheus metrics: a Registry of Counter, Gauge and Histogram families and
// their text exposition (format 0.0.4), served by MetricsHttpServer.
//
// Usage (one Registry per binary, families registered once at start):
//   metrics::Registry registry;
//   auto& steps = registry.AddCounter("tern_trainer_steps_total",
//                                     "Optimizer steps taken.", {"job"});
//   std::shared_ptr<metrics::Counter> job_steps = steps.WithLabels({"42"});
//   for (...) job_steps->Increment();        // hot loop: no lookup, no lock
//   registry.RemoveSeriesWithLabel("job", "42");  // when job 42 is done
//
// Programming errors abort via TERN_CHECK: an invalid metric or label name,
// registering a name again with another type, help, label names or buckets
// (registering it again with the same ones returns the existing family),
// a wrong number of label values, a negative or NaN counter increment,
// unsorted or non-finite histogram buckets.
//
// Thread safety: everything here may be called from any thread. Series are
// updated with atomics (Counter, Gauge) or a per-series mutex (Histogram).
#ifndef TERN_COMMON_METRICS_H_
#define TERN_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tern::metrics {

// Monotonically increasing value, e.g. requests served.
class Counter {
 public:
  // Adds `delta`, which must be >= 0 (aborts otherwise). Lock-free.
  void Increment(double delta = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Value that goes up and down, e.g. queue length.
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double delta = 1.0);  // Lock-free; delta may be negative.
  void Decrement(double delta = 1.0) { Increment(-delta); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Distribution of observations in buckets with fixed upper bounds.
class Histogram {
 public:
  // Per-bucket counts, cumulative, one per bound plus a last one for +Inf.
  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;
    double sum = 0.0;
    uint64_t count = 0;
  };
  // `bounds`: finite, strictly increasing (aborts otherwise); +Inf is implied.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);  // Takes the series' mutex briefly.
  Snapshot Collect() const;    // A consistent view: count == last bucket.
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // Not cumulative; size bounds_ + 1.
  double sum_ = 0.0;
};

// `count` bounds start, start+width, ...; and start, start*factor, ....
std::vector<double> LinearBuckets(double start, double width, int count);
std::vector<double> ExponentialBuckets(double start, double factor, int count);

enum class MetricType { kCounter, kGauge, kHistogram };

// What Registry needs from a family of any type.
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  MetricType type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Drops every series whose label `label_name` equals `value`; returns how
  // many were dropped (0 when the family has no such label).
  virtual size_t RemoveSeriesWithLabel(const std::string& label_name,
                                       const std::string& value) = 0;
  // Appends this family's HELP, TYPE and sample lines to `out`.
  virtual void AppendText(std::string* out) const = 0;

 protected:
  FamilyBase(std::string name, std::string help, MetricType type,
             std::vector<std::string> label_names);

 private:
  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
};

// All series of one metric name, one per combination of label values.
// Obtain from Registry::AddCounter/AddGauge/AddHistogram.
template <typename T>
class Family : public FamilyBase {
 public:
  // Use Registry::Add*; `bounds` is empty unless T is Histogram.
  Family(std::string name, std::string help,
         std::vector<std::string> label_names, std::vector<double> bounds);

  // Returns the series for `label_values` (one per label name, in registered
  // order), creating it on first use. The handle stays valid and cheap to
  // update for as long as it is held, even after Remove (the series then no
  // longer appears in the output; a later WithLabels creates a fresh one).
  std::shared_ptr<T> WithLabels(const std::vector<std::string>& label_values);
  // Drops the series; returns false when it did not exist.
  bool Remove(const std::vector<std::string>& label_values);
  size_t RemoveSeriesWithLabel(const std::string& label_name,
                               const std::string& value) override;
  size_t size() const;  // Number of series.
  void AppendText(std::string* out) const override;
  const std::vector<double>& bounds() const { return bounds_; }  // Histogram.

 private:
  const std::vector<double> bounds_;  // Empty unless T is Histogram.
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::shared_ptr<T>> series_;
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// Owns the families of one binary and writes them out for scraping.
class Registry {
 public:
  // Registers a family, or returns the existing one with the same name, type,
  // help, label names (and bounds). The reference lives as long as the
  // Registry. Aborts on an invalid name or a conflicting registration.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              const std::vector<std::string>& label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          const std::vector<std::string>& label_names = {});
  Family<Histogram>& AddHistogram(
      const std::string& name, const std::string& help,
      const std::vector<double>& bounds,
      const std::vector<std::string>& label_names = {});

  // Drops, across all families, every series whose label `label_name` equals
  // `value` (e.g. ("job", "42") when job 42 ends). Returns how many.
  size_t RemoveSeriesWithLabel(const std::string& label_name,
                               const std::string& value);

  // The text exposition format 0.0.4: families sorted by name, series sorted
  // by label values.
  std::string Serialize() const;

 private:
  template <typename T>
  Family<T>& Add(const std::string& name, const std::string& help,
                 const std::vector<std::string>& label_names,
                 const std::vector<double>& bounds);

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<FamilyBase>> families_;
};

// Validity per the Prometheus data model, for callers that take names from
// configuration and want to return a Status instead of aborting.
bool IsValidMetricName(const std::string& name);
bool IsValidLabelName(const std::string& name);
// Formats a sample value the way Prometheus parses it: "+Inf", "-Inf", "NaN",
// integers without exponent ("3", "1048576"), else the shortest round-trip.
std::string FormatValue(double value);

}  // namespace tern::metrics

#endif  // TERN_COMMON_METRICS_H_
