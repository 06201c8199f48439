// BSP (DESIGN invariant 4): a partition at step s collects the gradients of
// step s from every worker rank; when the last one arrives they are summed
// in rank order (0, 1, ...), divided by the number of workers, and applied
// once, so the result does not depend on the order pushes arrive in.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/ps/consistency_rule.h"

namespace psd {
namespace {

class BspRuleImpl final : public ConsistencyRule {
 public:
  void Init(int32_t workers, PartitionState* state) const override {
    state->pending.assign(workers, std::vector<float>(state->num_elements));
  }

  absl::Status CheckPush(int32_t partition_id, const PartitionState& state,
                         int32_t rank, int64_t step,
                         bool* duplicate) const override {
    if (step > state.step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", step, " is ahead of partition ", partition_id,
          ", which is at step ", state.step,
          " (pull the parameters of a step before pushing its gradients)"));
    }
    *duplicate = step < state.step || state.received[rank];
    return absl::OkStatus();
  }

  bool TakePush(int32_t rank, int64_t step, const float* data, int32_t workers,
                PartitionState* state) const override {
    if (step != state->step || state->received[rank]) return false;
    state->received[rank] = true;
    if (++state->received_count != workers) {
      std::copy(data, data + state->num_elements,
                state->pending[rank].begin());
      return false;
    }
    // The last rank's gradients are read where they are, not copied. Sum in
    // rank order, average, apply once: per element the same operations in
    // the same order as summing whole vectors, so the same bits.
    auto of_rank = [&](size_t r) -> const float* {
      return static_cast<int32_t>(r) == rank ? data : state->pending[r].data();
    };
    const float scale = 1.0f / static_cast<float>(workers);
    float* sum = state->sum.data();
    const int64_t n = state->num_elements;
    const size_t ranks = state->pending.size();
    if (ranks == 2) {  // the common case, in one pass
      const float* a = of_rank(0);
      const float* b = of_rank(1);
      for (int64_t k = 0; k < n; ++k) sum[k] = (a[k] + b[k]) * scale;
      return true;
    }
    std::copy(of_rank(0), of_rank(0) + n, sum);
    for (size_t r = 1; r < ranks; ++r) {
      const float* p = of_rank(r);
      for (int64_t k = 0; k < n; ++k) sum[k] += p[k];
    }
    for (int64_t k = 0; k < n; ++k) sum[k] *= scale;
    return true;
  }

  bool TakeQueued(PartitionState* state) const override { return false; }

  void BeforeApply(PartitionState* state) const override {
    state->previous = state->weights;
    state->previous_step = state->step;
  }

  int64_t SnapshotPoint(const PartitionState& state) const override {
    return state.step;
  }

  int64_t WorkerClock(const PartitionState& state,
                      int32_t rank) const override {
    return state.step +
           (rank < static_cast<int32_t>(state.received.size()) &&
            state.received[rank]);
  }

  // The partition reached the step, or keeps it as its previous one.
  absl::StatusOr<bool> Readable(int32_t partition_id,
                                const PartitionState& state,
                                const PullRequest& request,
                                std::string* why) const override {
    if (state.step > request.step() && state.previous_step != request.step()) {
      // Also a step < 0, which no partition keeps.
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", request.step(), " is no longer held: partition ",
          partition_id, " is at step ", state.step));
    }
    if (state.step >= request.step()) return true;
    if (why != nullptr) {
      *why = absl::StrCat("partition ", partition_id, " is at step ",
                          state.step, " (waiting for other workers' pushes)");
    }
    return false;
  }

  PullRead Read(const PartitionState& state, const PullRequest& request,
                bool rank_valid) const override {
    // A pull of the step before the partition's (a replacement worker
    // recomputing it) gets the previous weights.
    const bool previous = !request.latest() && state.step > request.step();
    PullRead read;
    read.weights = previous ? &state.previous : &state.weights;
    read.step = previous ? request.step() : state.step;
    read.clock = read.step;
    return read;
  }
};

}  // namespace

const ConsistencyRule& BspRule() {
  static const BspRuleImpl* const rule = new BspRuleImpl;
  return *rule;
}

}  // namespace psd
