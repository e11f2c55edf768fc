#include "common/metrics.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace tern::metrics {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(MetricsTest, SerializesCounterWithHelpAndTypeOnce) {
  Registry registry;
  auto& requests = registry.AddCounter("tern_test_requests_total",
                                       "Requests served.", {"method", "code"});
  requests.WithLabels({"GET", "200"})->Increment(3);
  requests.WithLabels({"POST", "500"})->Increment();
  EXPECT_EQ(registry.Serialize(),
            "# HELP tern_test_requests_total Requests served.\n"
            "# TYPE tern_test_requests_total counter\n"
            "tern_test_requests_total{method=\"GET\",code=\"200\"} 3\n"
            "tern_test_requests_total{method=\"POST\",code=\"500\"} 1\n");
}

TEST(MetricsTest, SerializesSeriesWithoutLabels) {
  Registry registry;
  registry.AddGauge("tern_test_up", "Up.").WithLabels({})->Set(1);
  EXPECT_EQ(registry.Serialize(),
            "# HELP tern_test_up Up.\n# TYPE tern_test_up gauge\n"
            "tern_test_up 1\n");
}

TEST(MetricsTest, EscapesHelpText) {
  Registry registry;
  registry.AddGauge("tern_test_g", "a\\b\nc \"quoted\"");
  // Backslash and newline are escaped in HELP; double quotes are not.
  EXPECT_TRUE(Contains(registry.Serialize(),
                       "# HELP tern_test_g a\\\\b\\nc \"quoted\"\n"))
      << registry.Serialize();
}

TEST(MetricsTest, EscapesLabelValues) {
  Registry registry;
  auto& g = registry.AddGauge("tern_test_g", "G.", {"path"});
  g.WithLabels({"C:\\dir\n\"x\""})->Set(2);
  EXPECT_TRUE(Contains(registry.Serialize(),
                       "tern_test_g{path=\"C:\\\\dir\\n\\\"x\\\"\"} 2\n"))
      << registry.Serialize();
}

TEST(MetricsTest, KeepsRegisteredLabelOrder) {
  Registry registry;
  auto& c = registry.AddCounter("tern_test_total", "C.", {"zeta", "alpha"});
  c.WithLabels({"1", "2"})->Increment();
  EXPECT_TRUE(Contains(registry.Serialize(),
                       "tern_test_total{zeta=\"1\",alpha=\"2\"} 1\n"));
}

TEST(MetricsTest, OrdersFamiliesByNameAndSeriesByLabelValues) {
  Registry registry;
  auto& b = registry.AddGauge("tern_test_b", "B.", {"k"});
  auto& a = registry.AddGauge("tern_test_a", "A.");
  b.WithLabels({"y"})->Set(1);
  b.WithLabels({"x"})->Set(2);
  a.WithLabels({})->Set(3);
  const std::string text = registry.Serialize();
  const size_t pos_a = text.find("tern_test_a 3");
  const size_t pos_x = text.find("tern_test_b{k=\"x\"} 2");
  const size_t pos_y = text.find("tern_test_b{k=\"y\"} 1");
  ASSERT_NE(pos_a, std::string::npos);
  ASSERT_NE(pos_x, std::string::npos);
  ASSERT_NE(pos_y, std::string::npos);
  EXPECT_LT(pos_a, pos_x);
  EXPECT_LT(pos_x, pos_y);
  EXPECT_EQ(registry.Serialize(), text);  // Deterministic.
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInf) {
  Registry registry;
  auto& h = registry.AddHistogram("tern_test_latency_seconds", "Latency.",
                                  {0.1, 0.5, 1}, {"op"});
  auto series = h.WithLabels({"read"});
  for (double v : {0.05, 0.1, 0.3, 0.7, 2.0, 3.0}) series->Observe(v);
  EXPECT_EQ(registry.Serialize(),
            "# HELP tern_test_latency_seconds Latency.\n"
            "# TYPE tern_test_latency_seconds histogram\n"
            "tern_test_latency_seconds_bucket{op=\"read\",le=\"0.1\"} 2\n"
            "tern_test_latency_seconds_bucket{op=\"read\",le=\"0.5\"} 3\n"
            "tern_test_latency_seconds_bucket{op=\"read\",le=\"1\"} 4\n"
            "tern_test_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 6\n"
            "tern_test_latency_seconds_sum{op=\"read\"} 6.15\n"
            "tern_test_latency_seconds_count{op=\"read\"} 6\n");
  const Histogram::Snapshot snap = series->Collect();
  EXPECT_EQ(snap.cumulative_counts, (std::vector<uint64_t>{2, 3, 4, 6}));
  EXPECT_EQ(snap.count, 6u);
  EXPECT_DOUBLE_EQ(snap.sum, 6.15);
}

TEST(MetricsTest, HistogramWithoutLabelsOrBounds) {
  Registry registry;
  registry.AddHistogram("tern_test_h", "H.", {}).WithLabels({})->Observe(4);
  EXPECT_TRUE(Contains(registry.Serialize(),
                       "tern_test_h_bucket{le=\"+Inf\"} 1\n"
                       "tern_test_h_sum 4\n"
                       "tern_test_h_count 1\n"))
      << registry.Serialize();
}

TEST(MetricsTest, BucketHelpers) {
  EXPECT_EQ(LinearBuckets(1, 2, 3), (std::vector<double>{1, 3, 5}));
  EXPECT_EQ(ExponentialBuckets(1, 10, 3), (std::vector<double>{1, 10, 100}));
}

TEST(MetricsTest, GaugeSetIncrementDecrement) {
  Gauge g;
  g.Set(5);
  g.Increment(2.5);
  g.Decrement();
  g.Increment(-0.5);
  EXPECT_DOUBLE_EQ(g.Value(), 6);
}

TEST(MetricsDeathTest, CounterRejectsNegativeIncrement) {
  Counter c;
  c.Increment(0);
  EXPECT_DEATH(c.Increment(-1), "counter increment must be >= 0");
  EXPECT_DEATH(c.Increment(std::nan("")), "counter increment must be >= 0");
  EXPECT_EQ(c.Value(), 0);
}

TEST(MetricsTest, ValidatesNames) {
  EXPECT_TRUE(IsValidMetricName("tern_jobs_total"));
  EXPECT_TRUE(IsValidMetricName("job:rate5m"));
  EXPECT_TRUE(IsValidMetricName("_x9"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9lives"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_FALSE(IsValidMetricName("a b"));
  EXPECT_TRUE(IsValidLabelName("job"));
  EXPECT_TRUE(IsValidLabelName("_x"));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("1a"));
  EXPECT_FALSE(IsValidLabelName(""));
}

TEST(MetricsDeathTest, RejectsInvalidRegistrations) {
  Registry registry;
  EXPECT_DEATH(registry.AddCounter("bad-name", "x"), "invalid metric name");
  EXPECT_DEATH(registry.AddCounter("ok_total", "x", {"__reserved"}),
               "invalid label name");
  EXPECT_DEATH(registry.AddCounter("ok_total", "x", {"a", "a"}), "given twice");
  EXPECT_DEATH(registry.AddHistogram("h", "x", {1}, {"le"}), "reserved");
  EXPECT_DEATH(registry.AddHistogram("h", "x", {2, 1}), "strictly increasing");
  EXPECT_DEATH(registry.AddHistogram(
                   "h", "x", {1, std::numeric_limits<double>::infinity()}),
               "not finite");
}

TEST(MetricsDeathTest, RejectsConflictingRegistration) {
  Registry registry;
  registry.AddCounter("tern_test_total", "C.", {"a"});
  EXPECT_DEATH(registry.AddGauge("tern_test_total", "C.", {"a"}),
               "registered twice");
  EXPECT_DEATH(registry.AddCounter("tern_test_total", "C.", {"b"}),
               "registered twice");
  registry.AddHistogram("tern_test_h", "H.", {1});
  EXPECT_DEATH(registry.AddHistogram("tern_test_h", "H.", {2}),
               "registered twice");
  EXPECT_DEATH(registry.AddGauge("tern_test_h_count", "G."), "clashes");
}

TEST(MetricsDeathTest, RejectsWrongNumberOfLabelValues) {
  Registry registry;
  auto& c = registry.AddCounter("tern_test_total", "C.", {"a", "b"});
  EXPECT_DEATH(c.WithLabels({"1"}), "takes 2 label values, got 1");
}

TEST(MetricsTest, SameRegistrationReturnsSameFamily) {
  Registry registry;
  auto& a = registry.AddCounter("tern_test_total", "C.", {"a"});
  auto& b = registry.AddCounter("tern_test_total", "C.", {"a"});
  EXPECT_EQ(&a, &b);
  EXPECT_EQ(a.WithLabels({"x"}), b.WithLabels({"x"}));  // Same series.
}

TEST(MetricsTest, ConcurrentUpdatesFromEightThreadsAreExact) {
  Registry registry;
  auto& counters = registry.AddCounter("tern_test_total", "C.", {"k"});
  auto& gauges = registry.AddGauge("tern_test_g", "G.");
  auto& histograms = registry.AddHistogram("tern_test_h", "H.", {0.5});
  constexpr int kThreads = 8;
  constexpr int kIterations = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      // Every thread looks the series up itself: creation races too.
      auto counter = counters.WithLabels({"shared"});
      auto gauge = gauges.WithLabels({});
      auto histogram = histograms.WithLabels({});
      for (int i = 0; i < kIterations; ++i) {
        counter->Increment();
        gauge->Increment(2);
        gauge->Decrement();
        histogram->Observe(i % 2 == 0 ? 0.25 : 1.0);
      }
    });
  }
  // Scrapes concurrently with the updates must not crash or tear.
  for (int i = 0; i < 20; ++i) (void)registry.Serialize();
  for (auto& thread : threads) thread.join();
  constexpr double kTotal = static_cast<double>(kThreads) * kIterations;
  EXPECT_EQ(counters.WithLabels({"shared"})->Value(), kTotal);
  EXPECT_EQ(gauges.WithLabels({})->Value(), kTotal);
  const Histogram::Snapshot snap = histograms.WithLabels({})->Collect();
  EXPECT_EQ(snap.count, static_cast<uint64_t>(kTotal));
  EXPECT_EQ(snap.cumulative_counts[0], static_cast<uint64_t>(kTotal / 2));
  EXPECT_EQ(snap.sum, kTotal / 2 * 0.25 + kTotal / 2 * 1.0);
  EXPECT_EQ(counters.size(), 1u);
}

TEST(MetricsTest, RemoveDropsSeries) {
  Registry registry;
  auto& c = registry.AddCounter("tern_test_total", "C.", {"job"});
  c.WithLabels({"41"})->Increment();
  c.WithLabels({"42"})->Increment();
  EXPECT_TRUE(c.Remove({"42"}));
  EXPECT_FALSE(c.Remove({"42"}));
  EXPECT_EQ(c.size(), 1u);
  const std::string text = registry.Serialize();
  EXPECT_TRUE(Contains(text, "job=\"41\""));
  EXPECT_FALSE(Contains(text, "job=\"42\""));
  // Re-created from zero after removal.
  EXPECT_EQ(c.WithLabels({"42"})->Value(), 0);
}

TEST(MetricsTest, HandleStaysUsableAfterRemove) {
  Registry registry;
  auto& c = registry.AddCounter("tern_test_total", "C.", {"job"});
  auto handle = c.WithLabels({"7"});
  EXPECT_TRUE(c.Remove({"7"}));
  handle->Increment(5);  // Harmless: no longer exported.
  EXPECT_EQ(handle->Value(), 5);
  EXPECT_FALSE(Contains(registry.Serialize(), "job=\"7\""));
}

TEST(MetricsTest, RemoveSeriesWithLabelAcrossFamilies) {
  Registry registry;
  auto& steps =
      registry.AddCounter("tern_test_steps_total", "S.", {"job", "rank"});
  auto& loss = registry.AddGauge("tern_test_loss", "L.", {"job"});
  auto& latency = registry.AddHistogram("tern_test_step_seconds", "T.", {1},
                                        {"rank", "job"});
  auto& other = registry.AddGauge("tern_test_other", "O.", {"node"});
  steps.WithLabels({"42", "0"})->Increment();
  steps.WithLabels({"42", "1"})->Increment();
  steps.WithLabels({"43", "0"})->Increment();
  loss.WithLabels({"42"})->Set(0.5);
  latency.WithLabels({"0", "42"})->Observe(0.1);
  other.WithLabels({"42"})->Set(1);  // Label "node", not "job": kept.
  EXPECT_EQ(registry.RemoveSeriesWithLabel("job", "42"), 4u);
  EXPECT_EQ(steps.size(), 1u);
  EXPECT_EQ(loss.size(), 0u);
  EXPECT_EQ(latency.size(), 0u);
  EXPECT_EQ(other.size(), 1u);
  EXPECT_FALSE(Contains(registry.Serialize(), "job=\"42\""));
  EXPECT_EQ(registry.RemoveSeriesWithLabel("job", "42"), 0u);
}

TEST(MetricsTest, FormatsValues) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-0.0), "0");
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(-17), "-17");
  EXPECT_EQ(FormatValue(1e6), "1000000");
  EXPECT_EQ(FormatValue(1048576), "1048576");
  EXPECT_EQ(FormatValue(9007199254740993.0), "9007199254740992");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(2.5), "2.5");
  EXPECT_EQ(FormatValue(1e-9), "1e-09");
  EXPECT_EQ(FormatValue(1e300), "1e+300");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  // Round trip for awkward values.
  for (double v : {1.0 / 3, 0.1 + 0.2, 123456.789, -2.2250738585072014e-308}) {
    EXPECT_EQ(std::strtod(FormatValue(v).c_str(), nullptr), v) << v;
  }
}

TEST(MetricsTest, PromtoolAcceptsOutput) {
  const char* kPromtool = "/usr/bin/promtool";
  if (access(kPromtool, X_OK) != 0) {
    GTEST_SKIP() << kPromtool << " not found (Debian package prometheus)";
  }
  Registry registry;
  auto& requests = registry.AddCounter("tern_test_requests_total",
                                       "Requests served,\nby \\ method.",
                                       {"method", "code"});
  requests.WithLabels({"GET", "200"})->Increment(7);
  requests.WithLabels({"a\"b\\c\nd", ""})->Increment(0.5);
  auto& queue =
      registry.AddGauge("tern_test_queue_length", "Queued jobs.", {"pool"});
  queue.WithLabels({"cpu"})->Set(3);
  queue.WithLabels({"nan"})->Set(std::nan(""));
  queue.WithLabels({"pinf"})->Set(std::numeric_limits<double>::infinity());
  queue.WithLabels({"ninf"})->Set(-std::numeric_limits<double>::infinity());
  queue.WithLabels({"tiny"})->Set(1e-12);
  auto& latency =
      registry.AddHistogram("tern_test_step_duration_seconds", "Step time.",
                            ExponentialBuckets(0.001, 4, 6), {"job"});
  for (double v : {0.0005, 0.003, 0.02, 0.5, 9.0}) {
    latency.WithLabels({"42"})->Observe(v);
  }
  registry.AddHistogram("tern_test_empty_seconds", "No series yet.", {1});

  const std::string dir = ::testing::TempDir();
  std::string path = dir + "/tern_metrics_XXXXXX";
  const int fd = mkstemp(path.data());
  ASSERT_GE(fd, 0) << "mkstemp in " << dir;
  close(fd);
  {
    std::ofstream file(path);
    file << registry.Serialize();
  }
  const std::string out_path = path + ".out";
  const std::string command = std::string(kPromtool) + " check metrics < '" +
                              path + "' > '" + out_path + "' 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream out_file(out_path);
  std::stringstream promtool_output;
  promtool_output << out_file.rdbuf();
  ASSERT_TRUE(WIFEXITED(status)) << command;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "promtool said:\n"
                                    << promtool_output.str() << "\ninput:\n"
                                    << registry.Serialize();
  std::remove(path.c_str());
  std::remove(out_path.c_str());
}

}  // namespace
}  // namespace tern::metrics
