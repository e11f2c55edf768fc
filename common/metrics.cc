#include "common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

#include "common/check.h"

namespace tern::metrics {
namespace {

// C++17 has no std::atomic<double>::fetch_add; a CAS loop is the same thing.
void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta,
                                       std::memory_order_relaxed)) {
  }
}

bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

void CheckBounds(const std::vector<double>& bounds) {
  for (size_t i = 0; i < bounds.size(); ++i) {
    TERN_CHECK(std::isfinite(bounds[i]))
        << "histogram bound " << i << " is not finite (+Inf is implied)";
    TERN_CHECK(i == 0 || bounds[i - 1] < bounds[i])
        << "histogram bounds must be strictly increasing, bound " << i << " = "
        << bounds[i] << " after " << bounds[i - 1];
  }
}

// HELP text: backslash and newline escaped.
void AppendEscapedHelp(const std::string& text, std::string* out) {
  for (char c : text) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
}

// Label values: backslash, double quote and newline escaped.
void AppendEscapedLabelValue(const std::string& text, std::string* out) {
  for (char c : text) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '"') {
      out->append("\\\"");
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
}

// `{a="x",b="y"` without the closing brace (so `le` can follow), or "" when
// there are no labels.
std::string OpenLabels(const std::vector<std::string>& names,
                       const std::vector<std::string>& values) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out.push_back(i == 0 ? '{' : ',');
    out.append(names[i]);
    out.append("=\"");
    AppendEscapedLabelValue(values[i], &out);
    out.push_back('"');
  }
  return out;
}

void AppendSample(const std::string& name, const std::string& open_labels,
                  double value, std::string* out) {
  out->append(name);
  if (!open_labels.empty()) {
    out->append(open_labels);
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(FormatValue(value));
  out->push_back('\n');
}

void AppendSeries(const std::string& name, const std::string& open_labels,
                  const Counter& counter, std::string* out) {
  AppendSample(name, open_labels, counter.Value(), out);
}

void AppendSeries(const std::string& name, const std::string& open_labels,
                  const Gauge& gauge, std::string* out) {
  AppendSample(name, open_labels, gauge.Value(), out);
}

void AppendSeries(const std::string& name, const std::string& open_labels,
                  const Histogram& histogram, std::string* out) {
  const Histogram::Snapshot snap = histogram.Collect();
  const std::vector<double>& bounds = histogram.bounds();
  const std::string bucket = name + "_bucket";
  const std::string le_prefix =
      open_labels.empty() ? "{le=\"" : open_labels + ",le=\"";
  for (size_t i = 0; i < snap.cumulative_counts.size(); ++i) {
    const std::string le =
        i < bounds.size() ? FormatValue(bounds[i]) : std::string("+Inf");
    out->append(bucket);
    out->append(le_prefix);
    out->append(le);
    out->append("\"} ");
    out->append(std::to_string(snap.cumulative_counts[i]));
    out->push_back('\n');
  }
  AppendSample(name + "_sum", open_labels, snap.sum, out);
  out->append(name);
  out->append("_count");
  if (!open_labels.empty()) {
    out->append(open_labels);
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(std::to_string(snap.count));
  out->push_back('\n');
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

MetricType TypeOf(const Counter*) { return MetricType::kCounter; }
MetricType TypeOf(const Gauge*) { return MetricType::kGauge; }
MetricType TypeOf(const Histogram*) { return MetricType::kHistogram; }

std::shared_ptr<Counter> NewSeries(const Counter*, const std::vector<double>&) {
  return std::make_shared<Counter>();
}
std::shared_ptr<Gauge> NewSeries(const Gauge*, const std::vector<double>&) {
  return std::make_shared<Gauge>();
}
std::shared_ptr<Histogram> NewSeries(const Histogram*,
                                     const std::vector<double>& bounds) {
  return std::make_shared<Histogram>(bounds);
}

constexpr const char* kHistogramSuffixes[] = {"_bucket", "_sum", "_count"};

}  // namespace

bool IsValidMetricName(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (!(IsNameStart(c) || c == ':' || (i > 0 && IsDigit(c)))) return false;
  }
  return true;
}

bool IsValidLabelName(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (!(IsNameStart(c) || (i > 0 && IsDigit(c)))) return false;
  }
  return true;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integral values print as integers: "1000000", not "1e+06". 9e18 < 2^63.
  if (value == std::trunc(value) && std::fabs(value) < 9e18) {
    return std::to_string(static_cast<long long>(value));
  }
  // Shortest string that parses back to the same double; locale-independent.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  TERN_CHECK(result.ec == std::errc()) << "to_chars failed for " << value;
  return std::string(buf, result.ptr);
}

// ---------------------------------------------------------------- series

void Counter::Increment(double delta) {
  TERN_CHECK(delta >= 0) << "counter increment must be >= 0, got " << delta;
  AtomicAdd(value_, delta);
}

void Gauge::Increment(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  CheckBounds(bounds_);
}

void Histogram::Observe(double value) {
  // First bucket whose bound is >= value; NaN goes to +Inf only.
  const size_t bucket =
      std::isnan(value)
          ? bounds_.size()
          : static_cast<size_t>(
                std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::Collect() const {
  Snapshot snap;
  snap.cumulative_counts.reserve(counts_.size());
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t running = 0;
  for (uint64_t c : counts_) {
    running += c;
    snap.cumulative_counts.push_back(running);
  }
  snap.count = running;
  snap.sum = sum_;
  return snap;
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  TERN_CHECK(width > 0 && count >= 0)
      << "width=" << width << " count=" << count;
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + width * i);
  return bounds;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  TERN_CHECK(start > 0 && factor > 1 && count >= 0)
      << "start=" << start << " factor=" << factor << " count=" << count;
  std::vector<double> bounds;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

// ---------------------------------------------------------------- families

FamilyBase::FamilyBase(std::string name, std::string help, MetricType type,
                       std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)) {}

template <typename T>
Family<T>::Family(std::string name, std::string help,
                  std::vector<std::string> label_names,
                  std::vector<double> bounds)
    : FamilyBase(std::move(name), std::move(help),
                 TypeOf(static_cast<const T*>(nullptr)),
                 std::move(label_names)),
      bounds_(std::move(bounds)) {
  CheckBounds(bounds_);
}

template <typename T>
std::shared_ptr<T> Family<T>::WithLabels(
    const std::vector<std::string>& label_values) {
  TERN_CHECK(label_values.size() == label_names().size())
      << "metric " << name() << " takes " << label_names().size()
      << " label values, got " << label_values.size();
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<T>& series = series_[label_values];
  if (!series) series = NewSeries(static_cast<const T*>(nullptr), bounds_);
  return series;
}

template <typename T>
bool Family<T>::Remove(const std::vector<std::string>& label_values) {
  std::lock_guard<std::mutex> lock(mu_);
  return series_.erase(label_values) > 0;
}

template <typename T>
size_t Family<T>::RemoveSeriesWithLabel(const std::string& label_name,
                                        const std::string& value) {
  const auto& names = label_names();
  const auto pos = std::find(names.begin(), names.end(), label_name);
  if (pos == names.end()) return 0;
  const size_t index = static_cast<size_t>(pos - names.begin());
  std::lock_guard<std::mutex> lock(mu_);
  size_t removed = 0;
  for (auto it = series_.begin(); it != series_.end();) {
    if (it->first[index] == value) {
      it = series_.erase(it);
      ++removed;
    } else {
      ++it;
    }
  }
  return removed;
}

template <typename T>
size_t Family<T>::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return series_.size();
}

template <typename T>
void Family<T>::AppendText(std::string* out) const {
  // Copy the handles so that formatting does not hold the family's lock.
  std::vector<std::pair<std::vector<std::string>, std::shared_ptr<T>>> series;
  {
    std::lock_guard<std::mutex> lock(mu_);
    series.assign(series_.begin(), series_.end());
  }
  out->append("# HELP ");
  out->append(name());
  if (!help().empty()) {
    out->push_back(' ');
    AppendEscapedHelp(help(), out);
  }
  out->append("\n# TYPE ");
  out->append(name());
  out->push_back(' ');
  out->append(TypeName(type()));
  out->push_back('\n');
  for (const auto& [values, handle] : series) {
    AppendSeries(name(), OpenLabels(label_names(), values), *handle, out);
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---------------------------------------------------------------- registry

template <typename T>
Family<T>& Registry::Add(const std::string& name, const std::string& help,
                         const std::vector<std::string>& label_names,
                         const std::vector<double>& bounds) {
  const MetricType type = TypeOf(static_cast<const T*>(nullptr));
  TERN_CHECK(IsValidMetricName(name)) << "invalid metric name '" << name << "'";
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    TERN_CHECK(IsValidLabelName(label))
        << "metric " << name << ": invalid label name '" << label << "'";
    TERN_CHECK(std::find(label_names.begin(), label_names.begin() + i, label) ==
               label_names.begin() + i)
        << "metric " << name << ": label '" << label << "' given twice";
    TERN_CHECK(type != MetricType::kHistogram || label != "le")
        << "metric " << name << ": 'le' is reserved in histograms";
  }

  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it != families_.end()) {
    auto* existing = dynamic_cast<Family<T>*>(it->second.get());
    TERN_CHECK(existing != nullptr && existing->help() == help &&
               existing->label_names() == label_names &&
               existing->bounds() == bounds)
        << "metric " << name
        << " registered twice with a different type, help, labels or buckets";
    return *existing;
  }
  // A histogram's samples are <name>_bucket, _sum and _count: no other family
  // may take those names.
  for (const char* suffix : kHistogramSuffixes) {
    if (type == MetricType::kHistogram) {
      TERN_CHECK(families_.count(name + suffix) == 0)
          << "histogram " << name << " clashes with metric " << name + suffix;
    }
    const std::string s(suffix);
    if (name.size() > s.size() &&
        name.compare(name.size() - s.size(), s.size(), s) == 0) {
      auto base = families_.find(name.substr(0, name.size() - s.size()));
      TERN_CHECK(base == families_.end() ||
                 base->second->type() != MetricType::kHistogram)
          << "metric " << name << " clashes with histogram " << base->first;
    }
  }
  auto family = std::make_unique<Family<T>>(name, help, label_names, bounds);
  Family<T>& result = *family;
  families_.emplace(name, std::move(family));
  return result;
}

Family<Counter>& Registry::AddCounter(
    const std::string& name, const std::string& help,
    const std::vector<std::string>& label_names) {
  return Add<Counter>(name, help, label_names, {});
}

Family<Gauge>& Registry::AddGauge(const std::string& name,
                                  const std::string& help,
                                  const std::vector<std::string>& label_names) {
  return Add<Gauge>(name, help, label_names, {});
}

Family<Histogram>& Registry::AddHistogram(
    const std::string& name, const std::string& help,
    const std::vector<double>& bounds,
    const std::vector<std::string>& label_names) {
  return Add<Histogram>(name, help, label_names, bounds);
}

size_t Registry::RemoveSeriesWithLabel(const std::string& label_name,
                                       const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t removed = 0;
  for (auto& [name, family] : families_) {
    removed += family->RemoveSeriesWithLabel(label_name, value);
  }
  return removed;
}

std::string Registry::Serialize() const {
  // Families are never removed, so the pointers outlive the lock.
  std::vector<const FamilyBase*> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, family] : families_)
      families.push_back(family.get());
  }
  std::string out;
  for (const FamilyBase* family : families) family->AppendText(&out);
  return out;
}

}  // namespace tern::metrics
