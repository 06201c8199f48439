// The versions of the one model a psd_serve process serves: each loaded
// export becomes version "1", "2", ... and is swapped in atomically, so a
// new version (a changed file, a newly pulled job) is loaded without
// dropping a request.
#ifndef PSD_SERVER_SERVING_MODEL_VERSIONS_H_
#define PSD_SERVER_SERVING_MODEL_VERSIONS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/safetensors.h"
#include "server/serving/batcher.h"
#include "server/serving/mlp_model.h"

namespace psd::serving {

// One loaded version: its model and the batcher that runs it. Immutable
// once published; a request holds a shared_ptr to the version it runs on,
// so a version replaced while the request waits in its batcher still
// answers it, and is destroyed (its batcher drained, its runner joined)
// when the last such request is done.
struct ModelVersion {
  // "1", "2", ... in load order.
  std::string version;
  // The export's __metadata__ (job_id, step, normalization_mean, ...).
  std::map<std::string, std::string> metadata;
  // Where it came from, for logs ("file X", "job J on HOST:PORT").
  std::string source;
  std::unique_ptr<MlpModel> model;
  // Runs `model`; declared after it, so destroyed (drained) first.
  std::unique_ptr<DynamicBatcher> batcher;
};

// Builds a ModelVersion from an export's tensors (MlpModel::Create: the
// parameters checked and batch independence calibrated).
struct ModelLoadOptions {
  BatcherOptions batching;
  int32_t blas_threads = 0;  // OpenBLAS threads, 0: its default
};

// The loaded versions, the newest serving requests without a version.
// How many stay loaded: the newest kKeptVersions (2). A request may name
// either; an older one is unloaded when its last request finishes, and
// naming it gets NOT_FOUND. Every version must have the same input and
// output widths as the first (a model whose tensors changed shape is
// refused, so clients built for the served signature keep working).
//
// Thread-safe.
class ModelVersions {
 public:
  static constexpr int kKeptVersions = 2;

  explicit ModelVersions(ModelLoadOptions options);

  // Loads `contents` as the next version and publishes it as the newest.
  // Runs on the calling thread (the calibration takes a moment); requests
  // keep being served by the current versions meanwhile. Returns the new
  // version. Errors: those of MlpModel::Create (INVALID_ARGUMENT naming
  // the tensor), prefixed with `source`; INVALID_ARGUMENT when the input
  // or output width differs from the first version's.
  absl::StatusOr<std::shared_ptr<const ModelVersion>> Load(
      SafetensorsContents contents, const std::string& source);

  // The version named `version` ("" or absent: the newest), or nullptr
  // when it is not loaded (or nothing is loaded yet).
  std::shared_ptr<const ModelVersion> Get(const std::string& version) const;

  // The loaded versions' names, oldest first.
  std::vector<std::string> Names() const;

  // The newest version's number (0 before the first load).
  int64_t newest_number() const;

  // The input and output widths (0 before the first load).
  int32_t input_dim() const;
  int32_t num_classes() const;

  const BatcherOptions& batching() const { return options_.batching; }

  // Requests waiting in the batchers of the loaded versions.
  int32_t queue_length() const;

  // Called with each batch's row count (e.g. a histogram's Observe), from
  // the batcher threads. Set before the first Load.
  void set_batch_observer(std::function<void(int32_t rows)> observer) {
    batch_observer_ = std::move(observer);
  }

 private:
  // Constant after construction.
  const ModelLoadOptions options_;
  std::function<void(int32_t)> batch_observer_;

  mutable absl::Mutex mu_;
  // Protected by mu_. Oldest first, at most kKeptVersions.
  std::vector<std::shared_ptr<const ModelVersion>> versions_
      ABSL_GUARDED_BY(mu_);
  int64_t loaded_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t input_dim_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t num_classes_ ABSL_GUARDED_BY(mu_) = 0;
  // Serialises Load (version numbers in publication order).
  absl::Mutex load_mu_;
};

}  // namespace psd::serving

#endif  // PSD_SERVER_SERVING_MODEL_VERSIONS_H_
