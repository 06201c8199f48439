#include "worker/job_parameters.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/rpc.h"
#include "common/status.h"
#include "worker/dataset.h"
#include "worker/ps_client.h"

namespace psd {

absl::StatusOr<JobStatus> GetJobStatus(JobService::Stub* jobs,
                                       const std::string& job_id,
                                       std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(timeout));
  GetJobRequest request;
  request.set_job_id(job_id);
  JobStatus status;
  PSD_RETURN_IF_ERROR(FromGrpcStatus(jobs->GetJob(&context, request, &status)));
  return status;
}

absl::StatusOr<std::vector<NamedTensor>> PullJobParameters(
    const JobStatus& status, int replica, std::chrono::milliseconds pull_timeout,
    int64_t* step) {
  if (status.placement().partitions_size() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", status.job_id(), " has not started (",
                     JobState_Name(status.state()), ")"));
  }
  Assignment assignment;
  assignment.set_job_id(status.job_id());
  *assignment.mutable_placement() = status.placement();
  *assignment.mutable_shards() = status.shards();
  *assignment.mutable_servers() = status.servers();
  assignment.set_view_epoch(status.view_epoch());
  for (ShardReplicas& shard : *assignment.mutable_shards()) {
    if (replica > 0 && shard.backups_size() > 0) {
      shard.set_primary(shard.backups(std::min(replica, shard.backups_size()) - 1));
    }
  }
  ParameterClientOptions options;
  options.pull_timeout_ms = static_cast<int>(pull_timeout.count());
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ParameterClient> client,
                       ParameterClient::Create(assignment, options));
  std::vector<std::vector<float>> params;
  PSD_RETURN_IF_ERROR(client->Pull(0, /*latest=*/true, &params, step));
  std::vector<NamedTensor> tensors;
  for (int i = 0; i < status.placement().parameters_size(); ++i) {
    const ParameterSpec& spec = status.placement().parameters(i);
    tensors.push_back(NamedTensor{
        spec.name(), {spec.shape().begin(), spec.shape().end()},
        std::move(params[i])});
  }
  return tensors;
}

std::map<std::string, std::string> ExportMetadata(const JobStatus& status,
                                                  int64_t step,
                                                  const std::string& data_dir,
                                                  std::string* note) {
  std::map<std::string, std::string> metadata = {
      {"job_id", status.job_id()},
      {"step", std::to_string(step)},
      {"format", "pt"}};
  std::string why;
  const std::string& dataset = status.config().dataset().name();
  if (dataset == "planted-clicks" || dataset == "criteo") {
    // A sparse job (issue 25): no image inputs to normalise.
  } else if (dataset != "fashion-mnist") {
    why = absl::StrCat("no input normalisation recorded: data set \"", dataset,
                       "\" is not fashion-mnist");
  } else {
    // The workers' LoadFashionMnist: every training image, limit or not.
    auto norm = ComputeNormalization(data_dir + "/train-images-idx3-ubyte.gz", 0);
    if (norm.ok()) {
      metadata["normalization_mean"] = absl::StrFormat("%.9g", norm->mean);
      metadata["normalization_std"] = absl::StrFormat("%.9g", norm->std);
    } else {
      why = absl::StrCat("no input normalisation recorded: ",
                         norm.status().message());
    }
  }
  if (note != nullptr) *note = why;
  return metadata;
}

}  // namespace psd
