// psd_serve's Prometheus metrics (common/metrics.h), updated by the
// inference service (both protocols) and the batchers.
#ifndef PSD_SERVER_SERVING_SERVING_METRICS_H_
#define PSD_SERVER_SERVING_SERVING_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "common/metrics.h"
#include "server/serving/model_versions.h"

namespace psd::serving {

// Registers, in `registry`:
//   psd_serve_requests_total{code}       counter: ModelInfer requests (gRPC
//                                        and HTTP) by their gRPC status
//                                        code name (OK, INVALID_ARGUMENT,
//                                        NOT_FOUND, RESOURCE_EXHAUSTED...)
//   psd_serve_request_duration_seconds   histogram: ModelInfer latency, from
//                                        the request's arrival at the service
//                                        to its answer (queueing included)
//   psd_serve_batch_rows                 histogram: rows per batch run
//   psd_serve_queue_length               gauge: requests waiting for a batch
//   psd_serve_model_version              gauge: the newest loaded version
//   psd_serve_model_loads_total          counter: versions loaded
// One psd_serve serves one model, so there is no model label.
// Neither argument is owned; both must outlive this. Thread-safe.
class ServingMetrics {
 public:
  ServingMetrics(MetricsRegistry* registry, const ModelVersions* versions);

  // One ModelInfer answered with `code` after `elapsed`.
  void RecordRequest(grpc::StatusCode code, absl::Duration elapsed);
  // One batch of `rows` rows run.
  void RecordBatch(int32_t rows) { batch_rows_->Observe(rows); }
  // One version loaded.
  void RecordLoad() { loads_->Increment(); }

 private:
  // Indexed by grpc::StatusCode (0..16).
  std::array<std::atomic<uint64_t>, 17> requests_{};
  Histogram* latency_;
  Histogram* batch_rows_;
  Counter* loads_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_SERVING_METRICS_H_
