// ASP and SSP (JobConfig.consistency; see "Consistency models" in
// docs/ARCHITECTURE.md): a rank's pushes are taken in order, each once, and
// each taken push is scaled by 1/workers and becomes one update at once when
// the partition is not replicating one; otherwise it is added (in arrival
// order) to the queued update. A pull of clock c by rank r waits for r's own
// c pushes (read-my-writes) and, under SSP, for the slowest rank's clock to
// reach c - staleness (Ho et al., NIPS 2013).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/ps/consistency_rule.h"

namespace psd {
namespace {

// The slowest rank's clock on an ASP/SSP partition, and that rank.
int64_t MinClock(const PartitionState& state, int32_t* slowest) {
  int64_t lowest = INT64_MAX;
  for (size_t r = 0; r < state.clocks.size(); ++r) {
    if (state.clocks[r] < lowest) {
      lowest = state.clocks[r];
      if (slowest != nullptr) *slowest = static_cast<int32_t>(r);
    }
  }
  return lowest == INT64_MAX ? 0 : lowest;
}

class AsyncRuleImpl final : public ConsistencyRule {
 public:
  void Init(int32_t workers, PartitionState* state) const override {
    state->clocks.assign(workers, 0);
    state->accepted.assign(workers, 0);
    state->update_clocks.assign(workers, 0);
    state->queued.resize(state->num_elements);
  }

  // A rank's pushes are taken in order, each once.
  absl::Status CheckPush(int32_t partition_id, const PartitionState& state,
                         int32_t rank, int64_t step,
                         bool* duplicate) const override {
    const int64_t next = state.accepted[rank];
    if (step > next) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step: ", step, " from rank ", rank, " is ahead: partition ",
          partition_id, " has taken ", next,
          " of its pushes (a rank pushes steps in order, from 0)"));
    }
    *duplicate = step < next;
    return absl::OkStatus();
  }

  bool TakePush(int32_t rank, int64_t step, const float* data, int32_t workers,
                PartitionState* state) const override {
    if (step != state->accepted[rank]) return false;
    ++state->accepted[rank];
    const float scale = 1.0f / static_cast<float>(workers);
    if (!state->replicating) {
      for (int64_t k = 0; k < state->num_elements; ++k) {
        state->sum[k] = data[k] * scale;
      }
      return true;
    }
    if (state->queued_count++ == 0) {
      for (int64_t k = 0; k < state->num_elements; ++k) {
        state->queued[k] = data[k] * scale;
      }
    } else {
      for (int64_t k = 0; k < state->num_elements; ++k) {
        state->queued[k] += data[k] * scale;
      }
    }
    return false;
  }

  bool TakeQueued(PartitionState* state) const override {
    if (state->queued_count == 0) return false;
    state->sum.swap(state->queued);
    state->queued_count = 0;
    return true;
  }

  void BeforeApply(PartitionState* state) const override {
    // No previous weights: ASP/SSP pulls are of the current ones.
    state->clocks = state->update_clocks;
    for (size_t r = 0; r < state->clocks.size(); ++r) {
      state->accepted[r] = std::max(state->accepted[r], state->clocks[r]);
    }
  }

  int64_t SnapshotPoint(const PartitionState& state) const override {
    return MinClock(state, nullptr);
  }

  int64_t WorkerClock(const PartitionState& state,
                      int32_t rank) const override {
    return rank < static_cast<int32_t>(state.clocks.size()) ? state.clocks[rank]
                                                             : 0;
  }

  // Whether a pull of clock request.step() by request.worker_rank() may
  // read `state` now; when not, *why says what it waits for.
  absl::StatusOr<bool> Readable(int32_t partition_id,
                                const PartitionState& state,
                                const PullRequest& request,
                                std::string* why) const override {
    const int32_t rank = request.worker_rank();
    const int64_t c = request.step();
    if (state.clocks[rank] < c) {
      if (why != nullptr) {
        *why = absl::StrCat("rank ", rank, "'s own push of step ", c - 1,
                            " is not applied yet to partition ", partition_id,
                            " (", state.clocks[rank], " of its pushes applied, ",
                            state.accepted[rank], " received)");
      }
      return false;
    }
    if (state.staleness < 0) return true;  // ASP
    int32_t slowest = 0;
    const int64_t min_clock = MinClock(state, &slowest);
    if (min_clock >= c - state.staleness) return true;
    if (why != nullptr) {
      *why = absl::StrCat("SSP staleness bound ", state.staleness, ": rank ",
                          rank, " at clock ", c, " may read partition ",
                          partition_id, " once every rank's clock is >= ",
                          c - state.staleness, "; the slowest is rank ",
                          slowest, " at clock ", min_clock);
    }
    return false;
  }

  PullRead Read(const PartitionState& state, const PullRequest& request,
                bool rank_valid) const override {
    PullRead read;
    read.weights = &state.weights;
    read.step = state.step;
    if (rank_valid) read.clock = state.clocks[request.worker_rank()];
    read.staleness = request.step() - MinClock(state, nullptr);
    return read;
  }
};

}  // namespace

const ConsistencyRule& AsyncRule() {
  static const AsyncRuleImpl* const rule = new AsyncRuleImpl;
  return *rule;
}

}  // namespace psd
