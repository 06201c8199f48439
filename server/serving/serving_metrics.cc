#include "server/serving/serving_metrics.h"

#include <string>

#include "absl/status/status.h"

namespace psd::serving {

namespace {

// Powers of two up to 1024 rows.
std::vector<double> RowBuckets() {
  std::vector<double> bounds;
  for (double b = 1; b <= 1024; b *= 2) bounds.push_back(b);
  return bounds;
}

}  // namespace

ServingMetrics::ServingMetrics(MetricsRegistry* registry,
                               const ModelVersions* versions) {
  registry->AddCounterFamilyCallback(
      "psd_serve_requests_total",
      "ModelInfer requests answered (gRPC and HTTP), by gRPC status code.",
      "code", [this] {
        LabeledValues values;
        for (size_t c = 0; c < requests_.size(); ++c) {
          const uint64_t n = requests_[c].load(std::memory_order_relaxed);
          // Codes never seen are left out, except OK.
          if (n == 0 && c != 0) continue;
          values.emplace_back(
              absl::StatusCodeToString(static_cast<absl::StatusCode>(c)),
              static_cast<double>(n));
        }
        return values;
      });
  latency_ = registry->AddHistogram(
      "psd_serve_request_duration_seconds",
      "ModelInfer latency in the server, queueing for a batch included.",
      LatencyBuckets());
  batch_rows_ = registry->AddHistogram(
      "psd_serve_batch_rows", "Rows in each batch run by the model.",
      RowBuckets());
  registry->AddGaugeCallback(
      "psd_serve_queue_length", "Requests waiting for a batch.",
      [versions] { return static_cast<double>(versions->queue_length()); });
  registry->AddGaugeCallback(
      "psd_serve_model_version", "The newest loaded model version (0: none).",
      [versions] { return static_cast<double>(versions->newest_number()); });
  loads_ = registry->AddCounter("psd_serve_model_loads_total",
                                "Model versions loaded.");
}

void ServingMetrics::RecordRequest(grpc::StatusCode code,
                                   absl::Duration elapsed) {
  const size_t c = static_cast<size_t>(code);
  if (c < requests_.size()) {
    requests_[c].fetch_add(1, std::memory_order_relaxed);
  }
  latency_->Observe(absl::ToDoubleSeconds(elapsed));
}

}  // namespace psd::serving
