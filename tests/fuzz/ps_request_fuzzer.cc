// Fuzzes what a peer's PushRequest and PullRequest go through on a
// parameter server: the service's bfloat16 widening (as
// ParameterService::StorePushRequest), then ParameterStore::Push and
// ParameterStore::PullAsync (update_path.cc, pull_path.cc) against a small
// real job (MLP 784-8-10, 10 partitions on one shard) created fresh for each
// input, and, for a pull left waiting, ExpirePull or CancelPull, then
// DropJob.
//
// Input: one byte of job settings (bits 0-1: BSP, ASP, SSP with staleness
// 1, BSP; bit 2: 2 workers, else 1; bit 3: the requests' job_id and
// view_epoch used as they are, else set to the job's, so that most inputs
// reach past FindJob and CheckEpoch; bit 4: pulls left waiting expire, else
// are cancelled), then up to 16 requests, each a type byte (even: push,
// odd: pull) and a chunk (fuzz_util.h) holding the serialized request.
//
// Invariants: every error is a status with a message (never a CHECK or
// crash); every pull's callback runs exactly once; an answered pull holds
// exactly the partitions asked for, each FLOAT32 of the partition's size.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/tensor.h"
#include "server/ps/parameter_store.h"
#include "tests/fuzz/fuzz_util.h"

namespace psd {
namespace {

constexpr char kJob[] = "fuzz-1";
constexpr int64_t kEpoch = 3;
constexpr int kMaxRequests = 16;

JobConfig Config(uint8_t settings) {
  JobConfig config;
  config.set_name("fuzz");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(8);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(7);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(0.1f);
  switch (settings & 3) {
    case 1:
      config.set_consistency(ASP);
      break;
    case 2:
      config.set_consistency(SSP);
      config.set_staleness(1);
      break;
    default:
      config.set_consistency(BSP);
  }
  config.set_batch_size(4);
  config.set_epochs(1);
  config.set_workers((settings & 4) ? 2 : 1);
  config.set_seed(1);
  config.set_partition_bytes(4096);
  return config;
}

// A pull and what its callback saw.
struct PullCall {
  PullRequest request;
  PullResponse response;
  int calls = 0;
  absl::Status status;
  uint64_t id = 0;
};

bool KnownError(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
      return true;
    default:
      return false;
  }
}

void CheckAnswer(const PullCall& pull, const Placement& placement) {
  if (!pull.status.ok()) {
    fuzz::RequireClearError(pull.status);
    FUZZ_REQUIRE(KnownError(pull.status.code()), pull.status.ToString());
    return;
  }
  FUZZ_REQUIRE(pull.response.parameters_size() ==
                   pull.request.partition_ids_size(),
               pull.request.ShortDebugString());
  for (int i = 0; i < pull.response.parameters_size(); ++i) {
    const PartitionTensor& p = pull.response.parameters(i);
    FUZZ_REQUIRE(p.partition_id() == pull.request.partition_ids(i),
                 absl::StrCat(p.partition_id()));
    FUZZ_REQUIRE(p.partition_id() >= 0 &&
                     p.partition_id() < placement.partitions_size(),
                 absl::StrCat(p.partition_id()));
    const int64_t n = placement.partitions(p.partition_id()).num_elements();
    const absl::Status ok = CheckFloat32(p.tensor(), n, "answer");
    FUZZ_REQUIRE(ok.ok(), ok.ToString());
  }
}

void Run(fuzz::Input& in) {
  const uint8_t settings = in.Byte();
  const bool as_sent = settings & 8;
  const bool expire = settings & 16;
  const JobConfig config = Config(settings);
  absl::StatusOr<Placement> placement =
      BuildPlacement(ModelParameters(config.model()), 4096, /*num_shards=*/1);
  FUZZ_REQUIRE(placement.ok(), placement.status().ToString());
  CreateJobRequest create;
  create.set_job_id(kJob);
  *create.mutable_config() = config;
  *create.mutable_placement() = *placement;
  create.add_shards(0);
  create.set_view_epoch(kEpoch);
  ParameterStore store;
  absl::StatusOr<CreateJobResponse> created = store.CreateJob(create);
  FUZZ_REQUIRE(created.ok(), created.status().ToString());

  std::vector<std::unique_ptr<PullCall>> pulls;
  auto pull = [&](PullRequest request) {
    auto call = std::make_unique<PullCall>();
    call->request = std::move(request);
    call->id = store.NewPullId();
    PullCall* raw = call.get();
    store.PullAsync(raw->id, raw->request, &raw->response,
                    [raw](absl::Status status) {
                      ++raw->calls;
                      raw->status = std::move(status);
                    });
    FUZZ_REQUIRE(raw->calls <= 1, "pull answered twice");
    pulls.push_back(std::move(call));
  };

  for (int r = 0; r < kMaxRequests && in.remaining() > 0; ++r) {
    const bool is_push = in.Byte() % 2 == 0;
    const std::string bytes = in.Chunk();
    if (is_push) {
      PushRequest request;
      if (!request.ParseFromString(bytes)) continue;
      if (!as_sent) {
        request.set_job_id(kJob);
        request.set_view_epoch(kEpoch);
      }
      if (request.has_shared_region()) continue;  // needs shared memory
      // ParameterService::StorePushRequest: bfloat16 widened to float32.
      absl::Status widened;
      for (int i = 0; i < request.gradients_size() && widened.ok(); ++i) {
        Tensor* t = request.mutable_gradients(i)->mutable_tensor();
        if (t->dtype() == BFLOAT16) {
          widened = WidenToFloat32(t, absl::StrCat("gradients[", i, "]"));
        }
      }
      if (!widened.ok()) {
        fuzz::RequireClearError(widened);
        continue;
      }
      absl::StatusOr<PushResponse> pushed = store.Push(request);
      if (!pushed.ok()) {
        fuzz::RequireClearError(pushed.status());
        FUZZ_REQUIRE(KnownError(pushed.status().code()),
                     pushed.status().ToString());
        continue;
      }
      FUZZ_REQUIRE(pushed->applied_step() >= 0, pushed->ShortDebugString());
      // ParameterService::Push with pull_next: the pull of step + 1.
      if (request.pull_next() && request.step() < INT64_MAX) {
        PullRequest next;
        next.set_job_id(request.job_id());
        next.set_worker_rank(request.worker_rank());
        next.set_step(request.step() + 1);
        next.set_view_epoch(request.view_epoch());
        for (const PartitionTensor& g : request.gradients()) {
          next.add_partition_ids(g.partition_id());
        }
        pull(std::move(next));
      }
    } else {
      PullRequest request;
      if (!request.ParseFromString(bytes)) continue;
      if (!as_sent) {
        request.set_job_id(kJob);
        request.set_view_epoch(kEpoch);
      }
      if (request.has_shared_region()) continue;  // needs shared memory
      pull(std::move(request));
    }
  }
  store.Status();
  // Pulls still waiting: expired or cancelled, as the service does when
  // their deadline passes or their client goes away.
  for (const auto& call : pulls) {
    if (call->calls > 0) continue;
    if (expire) {
      store.ExpirePull(call->request.job_id(), call->id);
    } else {
      store.CancelPull(call->request.job_id(), call->id,
                       absl::CancelledError("client went away"));
    }
  }
  absl::Status dropped = store.DropJob(kJob);
  FUZZ_REQUIRE(dropped.ok(), dropped.ToString());
  for (const auto& call : pulls) {
    FUZZ_REQUIRE(call->calls == 1,
                 absl::StrCat("pull callback ran ", call->calls, " times: ",
                              call->request.ShortDebugString()));
    CheckAnswer(*call, *placement);
  }
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::Input in(data, size);
  psd::Run(in);
  return 0;
}
