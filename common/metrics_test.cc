#include "common/metrics.h"

#include <httplib.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/metrics_http.h"

namespace psd {
namespace {

TEST_CASE("MetricsRegistry: renders the text format 0.0.4 exactly",
          "[metrics]") {
  MetricsRegistry registry;
  Counter* requests =
      registry.AddCounter("psd_test_requests_total", "Requests received.");
  Gauge* depth = registry.AddGauge("psd_test_queue_depth", "Queued items.");
  registry.AddGaugeCallback("psd_test_ratio", "A\\B\nC", [] { return 0.25; });
  registry.AddGaugeFamilyCallback(
      "psd_test_jobs", "Jobs by state.", "state", [] {
        return LabeledValues{{"PENDING", 2}, {"we\"ird\\", 0}};
      });
  Histogram* latency = registry.AddHistogram("psd_test_latency_seconds",
                                             "Call latency.", {0.1, 1});
  requests->Increment();
  requests->Increment(41);
  depth->Set(3);
  depth->Add(-1.5);
  latency->Observe(0.05);
  latency->Observe(0.1);
  latency->Observe(7);

  CHECK(registry.RenderPrometheusText() ==
        "# HELP psd_test_requests_total Requests received.\n"
        "# TYPE psd_test_requests_total counter\n"
        "psd_test_requests_total 42\n"
        "# HELP psd_test_queue_depth Queued items.\n"
        "# TYPE psd_test_queue_depth gauge\n"
        "psd_test_queue_depth 1.5\n"
        "# HELP psd_test_ratio A\\\\B\\nC\n"
        "# TYPE psd_test_ratio gauge\n"
        "psd_test_ratio 0.25\n"
        "# HELP psd_test_jobs Jobs by state.\n"
        "# TYPE psd_test_jobs gauge\n"
        "psd_test_jobs{state=\"PENDING\"} 2\n"
        "psd_test_jobs{state=\"we\\\"ird\\\\\"} 0\n"
        "# HELP psd_test_latency_seconds Call latency.\n"
        "# TYPE psd_test_latency_seconds histogram\n"
        "psd_test_latency_seconds_bucket{le=\"0.1\"} 2\n"
        "psd_test_latency_seconds_bucket{le=\"1\"} 2\n"
        "psd_test_latency_seconds_bucket{le=\"+Inf\"} 3\n"
        "psd_test_latency_seconds_sum 7.15\n"
        "psd_test_latency_seconds_count 3\n");
}

TEST_CASE("Histogram: a value equal to a bound counts in that bound's bucket",
          "[metrics]") {
  Histogram h({0.001, 0.01, 0.1});
  h.Observe(0);
  h.Observe(0.001);
  h.Observe(0.0010001);
  h.Observe(0.1);
  h.Observe(0.5);
  h.Observe(1e9);
  CHECK(h.BucketCounts() == std::vector<uint64_t>{2, 1, 1, 2});
  CHECK(h.Sum() == Approx(1e9 + 0.6020001));
}

TEST_CASE("Histogram: concurrent observations are all counted", "[metrics]") {
  MetricsRegistry registry;
  Histogram* h =
      registry.AddHistogram("psd_test_seconds", "x", LatencyBuckets());
  Counter* c = registry.AddCounter("psd_test_total", "x");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        h->Observe(0.002);
        c->Increment();
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(c->Value() == 40000);
  uint64_t total = 0;
  for (uint64_t n : h->BucketCounts()) total += n;
  CHECK(total == 40000);
  CHECK(h->Sum() == Approx(80.0));
  CHECK(absl::StrContains(registry.RenderPrometheusText(),
                          "psd_test_seconds_bucket{le=\"0.0025\"} 40000\n"));
}

TEST_CASE("FormatMetricValue: exact integers, round-trip doubles, specials",
          "[metrics]") {
  CHECK(FormatMetricValue(0) == "0");
  CHECK(FormatMetricValue(-3) == "-3");
  CHECK(FormatMetricValue(12345678901234) == "12345678901234");
  CHECK(FormatMetricValue(0.0001) == "0.0001");
  CHECK(FormatMetricValue(0.1 + 0.2) == "0.30000000000000004");
  CHECK(FormatMetricValue(1.0 / 0.0) == "+Inf");
  CHECK(FormatMetricValue(-1.0 / 0.0) == "-Inf");
  CHECK(FormatMetricValue(std::nan("")) == "NaN");
  const double start = 1718000000.125;
  CHECK(std::strtod(FormatMetricValue(start).c_str(), nullptr) == start);
}

// The value of the unlabelled sample `name` in `text`; NaN when absent.
double SampleValue(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, name + " ")) {
      return std::strtod(std::string(line.substr(name.size() + 1)).c_str(),
                         nullptr);
    }
  }
  return std::nan("");
}

TEST_CASE("AddProcessMetrics: reads this process's resources from /proc",
          "[metrics]") {
  MetricsRegistry registry;
  AddProcessMetrics(&registry);
  const std::string text = registry.RenderPrometheusText();
  CHECK(SampleValue(text, "process_resident_memory_bytes") > 1e5);
  CHECK(SampleValue(text, "process_virtual_memory_bytes") >=
        SampleValue(text, "process_resident_memory_bytes"));
  CHECK(SampleValue(text, "process_open_fds") >= 3);
  CHECK(SampleValue(text, "process_max_fds") >= 64);
  CHECK(SampleValue(text, "process_cpu_seconds_total") >= 0);
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double start = SampleValue(text, "process_start_time_seconds");
  CHECK(start <= now + 1);
  CHECK(start > now - 24 * 3600);
  CHECK(absl::StrContains(text, "# TYPE process_cpu_seconds_total counter\n"));
}

TEST_CASE("MetricsServer: serves GET /metrics on an OS-chosen port",
          "[metrics][http]") {
  MetricsRegistry registry;
  registry.AddCounter("psd_test_total", "x")->Increment(7);
  auto server = MetricsServer::Start("127.0.0.1:0", &registry);
  REQUIRE(server.ok());
  REQUIRE((*server)->port() > 0);

  httplib::Client client("127.0.0.1", (*server)->port());
  auto response = client.Get("/metrics");
  REQUIRE(response);
  CHECK(response->status == 200);
  CHECK(absl::StartsWith(response->get_header_value("Content-Type"),
                         "text/plain; version=0.0.4"));
  CHECK(response->body == registry.RenderPrometheusText());
  auto missing = client.Get("/nope");
  REQUIRE(missing);
  CHECK(missing->status == 404);
}

TEST_CASE("MetricsServer: a port in use is a clear error", "[metrics][http]") {
  MetricsRegistry registry;
  auto first = MetricsServer::Start("127.0.0.1:0", &registry);
  REQUIRE(first.ok());
  const std::string address = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = MetricsServer::Start(address, &registry);
  REQUIRE(!second.ok());
  CHECK(second.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(second.status().message(),
                          "cannot listen on " + address));
}

TEST_CASE("MetricsServer: a malformed address is INVALID_ARGUMENT",
          "[metrics][http]") {
  MetricsRegistry registry;
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:x", "host:70000"}) {
    auto server = MetricsServer::Start(bad, &registry);
    CHECK(server.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("MetricsServer: stops promptly when destroyed", "[metrics][http]") {
  MetricsRegistry registry;
  for (int i = 0; i < 20; ++i) {
    auto server = MetricsServer::Start("127.0.0.1:0", &registry);
    REQUIRE(server.ok());
  }
}

}  // namespace
}  // namespace psd
