#include "server/serving/model_versions.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"

namespace psd::serving {

ModelVersions::ModelVersions(ModelLoadOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<const ModelVersion>> ModelVersions::Load(
    SafetensorsContents contents, const std::string& source) {
  absl::MutexLock load_lock(&load_mu_);
  auto model = MlpModel::Create(
      std::move(contents.tensors),
      kernels::CreateCpuBackend(options_.blas_threads),
      options_.batching.max_batch_size);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat(source, ": ", model.status().message()));
  }
  const int32_t in = (*model)->input_dim();
  const int32_t out = (*model)->num_classes();
  {
    absl::MutexLock lock(&mu_);
    if (loaded_ > 0 && (in != input_dim_ || out != num_classes_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": a model [", in, " -> ", out,
          "], but this server serves [", input_dim_, " -> ", num_classes_,
          "]; a model of another signature needs another psd_serve"));
    }
  }
  auto version = std::make_shared<ModelVersion>();
  version->metadata = std::move(contents.metadata);
  version->source = source;
  version->model = *std::move(model);
  MlpModel* mlp = version->model.get();
  std::function<void(int32_t)> observe = batch_observer_;
  version->batcher = std::make_unique<DynamicBatcher>(
      options_.batching, in, out,
      [mlp, observe](const float* x, int32_t rows, float* y) {
        if (observe) observe(rows);
        mlp->Forward(x, rows, y);
      });
  absl::MutexLock lock(&mu_);
  ++loaded_;
  version->version = absl::StrCat(loaded_);
  input_dim_ = in;
  num_classes_ = out;
  versions_.push_back(version);
  if (versions_.size() > kKeptVersions) versions_.erase(versions_.begin());
  return std::shared_ptr<const ModelVersion>(std::move(version));
}

std::shared_ptr<const ModelVersion> ModelVersions::Get(
    const std::string& version) const {
  absl::MutexLock lock(&mu_);
  if (versions_.empty()) return nullptr;
  if (version.empty()) return versions_.back();
  for (const auto& v : versions_) {
    if (v->version == version) return v;
  }
  return nullptr;
}

std::vector<std::string> ModelVersions::Names() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& v : versions_) names.push_back(v->version);
  return names;
}

int64_t ModelVersions::newest_number() const {
  absl::MutexLock lock(&mu_);
  return loaded_;
}

int32_t ModelVersions::input_dim() const {
  absl::MutexLock lock(&mu_);
  return input_dim_;
}

int32_t ModelVersions::num_classes() const {
  absl::MutexLock lock(&mu_);
  return num_classes_;
}

int32_t ModelVersions::queue_length() const {
  std::vector<std::shared_ptr<const ModelVersion>> versions;
  {
    absl::MutexLock lock(&mu_);
    versions = versions_;
  }
  int32_t queued = 0;
  for (const auto& v : versions) queued += v->batcher->queue_length();
  return queued;
}

}  // namespace psd::serving
