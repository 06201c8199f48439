// Prometheus metrics: a small registry of counters, gauges and histograms,
// rendered in the Prometheus text exposition format 0.0.4. Debian ships no
// Prometheus client library, so this is ours; common/metrics_http.h serves
// the text over HTTP.
//
// Example:
//   MetricsRegistry registry;  // one per process, owned by main()
//   Counter* pushes = registry.AddCounter(
//       "psd_server_push_requests_total", "Push calls received.");
//   pushes->Increment();
//   std::string text = registry.RenderPrometheusText();
//
// Names follow Prometheus conventions: psd_<component>_<what>_<unit>,
// counters end in _total, durations are in seconds and sizes in bytes.
#ifndef PSD_COMMON_METRICS_H_
#define PSD_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace psd {

// A monotonically increasing integer count (requests, bytes, steps).
// Thread-safe and lock-free.
class Counter {
 public:
  void Increment(uint64_t n = 1) {
    value_.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down. Thread-safe and lock-free.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double delta);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets: bucket i counts the values v
// with bounds[i-1] < v <= bounds[i] (Prometheus "le" semantics), plus one
// +Inf bucket. Thread-safe and lock-free (Observe touches two atomics).
class Histogram {
 public:
  // REQUIRES: `bounds` strictly increasing and finite.
  explicit Histogram(std::vector<double> bounds);

  void Observe(double v);

  const std::vector<double>& bounds() const { return bounds_; }
  // Non-cumulative counts: bounds().size() + 1 entries, the last for +Inf.
  std::vector<uint64_t> BucketCounts() const;
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  // Constant after construction.
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 100 µs to 10 s (1-2.5-5 steps).
std::vector<double> LatencyBuckets();

// One label value and its sample value, for labelled callback families.
using LabeledValues = std::vector<std::pair<std::string, double>>;

// The metrics of one process. Metrics are rendered in registration order.
// Owns the metrics it returns: pointers stay valid for its lifetime.
// Thread-safe: registration and rendering may happen from any thread; the
// returned metrics are updated without locks. Callbacks run on the
// rendering thread, without the registry's lock held, and must be
// thread-safe themselves.
//
// REQUIRES (every Add*): `name` matches [a-zA-Z_:][a-zA-Z0-9_:]* and is not
// registered yet; `label` matches [a-zA-Z_][a-zA-Z0-9_]*. These are
// programming errors (names are constants), so a violation aborts.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  Counter* AddCounter(const std::string& name, const std::string& help);
  Gauge* AddGauge(const std::string& name, const std::string& help);
  // REQUIRES: bounds strictly increasing and finite.
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds);

  // Metrics whose value is read at render time (e.g. from /proc).
  void AddCounterCallback(const std::string& name, const std::string& help,
                          std::function<double()> value);
  void AddGaugeCallback(const std::string& name, const std::string& help,
                        std::function<double()> value);
  // A gauge family with one label: each (label value, value) pair returned
  // by `values` becomes a sample `name{label="value"} v`.
  void AddGaugeFamilyCallback(const std::string& name, const std::string& help,
                              const std::string& label,
                              std::function<LabeledValues()> values);
  // The same for a counter family: `values` returns each label value's
  // running total (which must never decrease).
  void AddCounterFamilyCallback(const std::string& name,
                                const std::string& help,
                                const std::string& label,
                                std::function<LabeledValues()> values);

  // Every metric in the text exposition format 0.0.4 (Content-Type
  // "text/plain; version=0.0.4"): # HELP and # TYPE lines, then samples;
  // histograms as cumulative _bucket{le="..."}, _sum and _count.
  std::string RenderPrometheusText() const;

 private:
  struct Entry;
  void Add(std::unique_ptr<Entry> entry);

  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<const Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

// Registers the standard Prometheus process metrics, read from /proc/self
// at render time: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and
// process_start_time_seconds.
void AddProcessMetrics(MetricsRegistry* registry);

// A sample value as Prometheus text: integers without a fraction, other
// values with enough digits to read back the same double, "+Inf", "-Inf",
// "NaN".
std::string FormatMetricValue(double v);

}  // namespace psd

#endif  // PSD_COMMON_METRICS_H_
