#include "common/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace psd {

namespace {

void AtomicAdd(std::atomic<double>* target, double delta) {
  double old = target->load(std::memory_order_relaxed);
  while (!target->compare_exchange_weak(old, old + delta,
                                        std::memory_order_relaxed)) {
  }
}

bool ValidName(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    c == '_' || (allow_colon && c == ':') ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "MetricsRegistry: %s\n", message.c_str());
  std::abort();
}

// HELP text: backslash and newline escaped.
std::string EscapeHelp(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Label values: backslash, double quote and newline escaped.
std::string EscapeLabelValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

void Gauge::Add(double delta) { AtomicAdd(&value_, delta); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && bounds_[i] <= bounds_[i - 1])) {
      Die("histogram bounds must be finite and strictly increasing");
    }
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i] = 0;
}

void Histogram::Observe(double v) {
  // The first bound >= v; bounds_.size() (the +Inf bucket) when none.
  const size_t i =
      std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(&sum_, v);
}

std::vector<uint64_t> Histogram::BucketCounts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1);
  for (size_t i = 0; i < counts.size(); ++i) {
    counts[i] = counts_[i].load(std::memory_order_relaxed);
  }
  return counts;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

struct MetricsRegistry::Entry {
  enum class Type { kCounter, kGauge, kHistogram };
  std::string name;
  std::string help;
  Type type;
  // Exactly one of these is set.
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> value;
  std::string label;  // with `values`
  std::function<LabeledValues()> values;

  void Render(std::string* out) const {
    const char* type_name = type == Type::kCounter ? "counter"
                            : type == Type::kGauge ? "gauge"
                                                   : "histogram";
    absl::StrAppend(out, "# HELP ", name, " ", EscapeHelp(help), "\n",
                    "# TYPE ", name, " ", type_name, "\n");
    if (counter) {
      absl::StrAppend(out, name, " ", counter->Value(), "\n");
    } else if (gauge) {
      absl::StrAppend(out, name, " ", FormatMetricValue(gauge->Value()), "\n");
    } else if (value) {
      absl::StrAppend(out, name, " ", FormatMetricValue(value()), "\n");
    } else if (values) {
      for (const auto& [label_value, v] : values()) {
        absl::StrAppend(out, name, "{", label, "=\"",
                        EscapeLabelValue(label_value), "\"} ",
                        FormatMetricValue(v), "\n");
      }
    } else if (histogram) {
      // _count is the +Inf bucket of the same snapshot, so the two always
      // agree even while observations land.
      const std::vector<uint64_t> counts = histogram->BucketCounts();
      uint64_t cumulative = 0;
      for (size_t i = 0; i < counts.size(); ++i) {
        cumulative += counts[i];
        const std::string le = i < histogram->bounds().size()
                                   ? FormatMetricValue(histogram->bounds()[i])
                                   : "+Inf";
        absl::StrAppend(out, name, "_bucket{le=\"", le, "\"} ", cumulative,
                        "\n");
      }
      absl::StrAppend(out, name, "_sum ", FormatMetricValue(histogram->Sum()),
                      "\n", name, "_count ", cumulative, "\n");
    }
  }
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

void MetricsRegistry::Add(std::unique_ptr<Entry> entry) {
  if (!ValidName(entry->name, /*allow_colon=*/true)) {
    Die(absl::StrCat("invalid metric name \"", entry->name, "\""));
  }
  if (entry->values && !ValidName(entry->label, /*allow_colon=*/false)) {
    Die(absl::StrCat("invalid label name \"", entry->label, "\""));
  }
  absl::MutexLock lock(&mu_);
  for (const auto& e : entries_) {
    if (e->name == entry->name) {
      Die(absl::StrCat("metric \"", entry->name, "\" registered twice"));
    }
  }
  entries_.push_back(std::move(entry));
}

Counter* MetricsRegistry::AddCounter(const std::string& name,
                                     const std::string& help) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kCounter;
  entry->counter = std::make_unique<Counter>();
  Counter* counter = entry->counter.get();
  Add(std::move(entry));
  return counter;
}

Gauge* MetricsRegistry::AddGauge(const std::string& name,
                                 const std::string& help) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kGauge;
  entry->gauge = std::make_unique<Gauge>();
  Gauge* gauge = entry->gauge.get();
  Add(std::move(entry));
  return gauge;
}

Histogram* MetricsRegistry::AddHistogram(const std::string& name,
                                         const std::string& help,
                                         std::vector<double> bounds) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kHistogram;
  entry->histogram = std::make_unique<Histogram>(std::move(bounds));
  Histogram* histogram = entry->histogram.get();
  Add(std::move(entry));
  return histogram;
}

void MetricsRegistry::AddCounterCallback(const std::string& name,
                                         const std::string& help,
                                         std::function<double()> value) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kCounter;
  entry->value = std::move(value);
  Add(std::move(entry));
}

void MetricsRegistry::AddGaugeCallback(const std::string& name,
                                       const std::string& help,
                                       std::function<double()> value) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kGauge;
  entry->value = std::move(value);
  Add(std::move(entry));
}

void MetricsRegistry::AddGaugeFamilyCallback(
    const std::string& name, const std::string& help, const std::string& label,
    std::function<LabeledValues()> values) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kGauge;
  entry->label = label;
  entry->values = std::move(values);
  Add(std::move(entry));
}

void MetricsRegistry::AddCounterFamilyCallback(
    const std::string& name, const std::string& help, const std::string& label,
    std::function<LabeledValues()> values) {
  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->help = help;
  entry->type = Entry::Type::kCounter;
  entry->label = label;
  entry->values = std::move(values);
  Add(std::move(entry));
}

std::string MetricsRegistry::RenderPrometheusText() const {
  std::vector<std::shared_ptr<const Entry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries = entries_;
  }
  // Callbacks run without mu_ held: they may take their own locks.
  std::string out;
  for (const auto& entry : entries) entry->Render(&out);
  return out;
}

namespace {

// The whitespace-separated fields of a one-line /proc file; empty when it
// cannot be read.
std::vector<std::string> ReadProcFields(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return {};
  // /proc/self/stat: field 2 is "(comm)" and may hold spaces; start after it.
  const size_t paren = line.rfind(')');
  if (paren != std::string::npos) line = "x x" + line.substr(paren + 1);
  return absl::StrSplit(line, ' ', absl::SkipEmpty());
}

double StatmBytes(int field) {
  const std::vector<std::string> f = ReadProcFields("/proc/self/statm");
  if (static_cast<int>(f.size()) <= field) return NAN;
  return std::strtod(f[field].c_str(), nullptr) *
         static_cast<double>(sysconf(_SC_PAGESIZE));
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return NAN;
  int n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // not counting the descriptor of `dir` itself
}

// Seconds since the epoch at which this process started: boot time
// (/proc/stat btime) plus the start time in clock ticks (/proc/self/stat
// field 22); the current time when /proc cannot be read.
double ProcessStartTime() {
  const std::vector<std::string> stat = ReadProcFields("/proc/self/stat");
  std::ifstream in("/proc/stat");
  std::string line;
  double boot = -1;
  while (std::getline(in, line)) {
    if (line.rfind("btime ", 0) == 0)
      boot = std::strtod(line.c_str() + 6, nullptr);
  }
  if (stat.size() < 22 || boot < 0) {
    return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  }
  return boot + std::strtod(stat[21].c_str(), nullptr) /
                    static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace

void AddProcessMetrics(MetricsRegistry* registry) {
  registry->AddCounterCallback(
      "process_cpu_seconds_total",
      "Total user and system CPU time spent in seconds.", [] {
        rusage usage;
        if (getrusage(RUSAGE_SELF, &usage) != 0) return double{NAN};
        const int64_t micros =
            (int64_t{usage.ru_utime.tv_sec} + usage.ru_stime.tv_sec) * 1000000 +
            usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
        return static_cast<double>(micros) / 1e6;
      });
  registry->AddGaugeCallback("process_resident_memory_bytes",
                             "Resident memory size in bytes.",
                             [] { return StatmBytes(1); });
  registry->AddGaugeCallback("process_virtual_memory_bytes",
                             "Virtual memory size in bytes.",
                             [] { return StatmBytes(0); });
  registry->AddGaugeCallback("process_open_fds",
                             "Number of open file descriptors.", OpenFds);
  registry->AddGaugeCallback("process_max_fds",
                             "Maximum number of open file descriptors.", [] {
                               rlimit limit;
                               if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
                                 return double{NAN};
                               }
                               return static_cast<double>(limit.rlim_cur);
                             });
  const double start = ProcessStartTime();
  registry->AddGaugeCallback(
      "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.",
      [start] { return start; });
}

}  // namespace psd
