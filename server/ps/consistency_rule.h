// The consistency rules of a ParameterStore's partitions (private to the
// parameter_store library): what BSP and ASP/SSP decide about a partition's
// pushes, updates and pulls, apart from the partition bookkeeping (the
// store's roles, replication, snapshots and waiters), which is the same for
// every rule. See "Consistency models" in docs/ARCHITECTURE.md and the
// comment of ParameterStore (parameter_store.h).
#ifndef PSD_SERVER_PS_CONSISTENCY_RULE_H_
#define PSD_SERVER_PS_CONSISTENCY_RULE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/proto.h"
#include "server/ps/partition_state.h"

namespace psd {

// What a pull reads from one partition once the rule allows it.
struct PullRead {
  // The weights returned: the current ones or (BSP) the previous step's.
  // Points into the partition's state.
  const std::vector<float>* weights = nullptr;
  // The updates those weights have (PullResponse.step is the fewest).
  int64_t step = 0;
  // The pulling rank's pushes applied to them (PullResponse.clock is the
  // fewest); nullopt: not known (an ASP/SSP pull of `latest` from no valid
  // rank).
  std::optional<int64_t> clock;
  // ASP/SSP: the pull's clock c - the slowest rank's clock (may be < 0);
  // nullopt under BSP.
  std::optional<int64_t> staleness;
};

// A consistency model's decisions for one partition. The rules are
// stateless: everything they keep is in the PartitionState they are given,
// so one instance of each serves every partition of every job.
// Thread-safe (const). REQUIRES for every method: the partition's Job mu
// held by the caller.
class ConsistencyRule {
 public:
  virtual ~ConsistencyRule() = default;

  // Allocates the rule's per-rank state of a new partition of
  // state->num_elements elements in a job of `workers` ranks (BSP: a
  // gradient buffer per rank; ASP/SSP: the clocks and the queue).
  virtual void Init(int32_t workers, PartitionState* state) const = 0;

  // A push of `step` by `rank` (validated: 0 <= rank < workers, step >= 0)
  // to the partition `partition_id` with `state`, before any of the push is
  // taken: OK with *duplicate set when it was taken already (acknowledged,
  // never applied again), or FAILED_PRECONDITION when the step is ahead of
  // what the partition can take.
  virtual absl::Status CheckPush(int32_t partition_id,
                                 const PartitionState& state, int32_t rank,
                                 int64_t step, bool* duplicate) const = 0;

  // Takes a push that CheckPush accepted (`data`: state->num_elements
  // floats; a duplicate is ignored here). Returns true when state->sum now
  // holds the partition's next update, to be started (replicated, then
  // applied) by the caller; false when the push is kept for later (BSP:
  // other ranks' pushes are missing; ASP/SSP: it is queued behind the
  // update being replicated).
  virtual bool TakePush(int32_t rank, int64_t step, const float* data,
                        int32_t workers, PartitionState* state) const = 0;

  // After an update was applied: moves the pushes queued meanwhile into
  // state->sum as the next update and returns true; false when there are
  // none (always under BSP). REQUIRES: not replicating.
  virtual bool TakeQueued(PartitionState* state) const = 0;

  // The rule's bookkeeping of the update in state->sum, just before the
  // optimizer applies it (BSP: keep the weights as the previous step's;
  // ASP/SSP: the clocks become the update's).
  virtual void BeforeApply(PartitionState* state) const = 0;

  // Where the partition is on the snapshot scale (SnapshotManifest.step in
  // proto/snapshot.proto): BSP its step, ASP/SSP its slowest rank's clock.
  virtual int64_t SnapshotPoint(const PartitionState& state) const = 0;

  // `rank`'s clock on the partition for ServerJobStatus.worker_clocks (BSP:
  // the step, plus one when the rank pushed its gradient of the step).
  virtual int64_t WorkerClock(const PartitionState& state,
                              int32_t rank) const = 0;

  // Whether a pull of `request` (not `latest`; its rank validated under
  // ASP/SSP) may read the partition now. False: it must wait, and *why
  // (when not null) says for what. An error when it never can (BSP: a step
  // no longer held, FAILED_PRECONDITION).
  virtual absl::StatusOr<bool> Readable(int32_t partition_id,
                                        const PartitionState& state,
                                        const PullRequest& request,
                                        std::string* why) const = 0;

  // What a pull of `request` reads once Readable (or `latest` is set);
  // rank_valid: request.worker_rank() names a rank of the job.
  virtual PullRead Read(const PartitionState& state, const PullRequest& request,
                        bool rank_valid) const = 0;
};

// BSP (bsp_rule.cc): a partition at step s collects every rank's gradient
// of step s, and their average in rank order is its update.
const ConsistencyRule& BspRule();
// ASP and SSP (async_rule.cc): each rank's pushes are taken in order and
// applied as they arrive; SSP bounds how far a pull may run ahead of the
// slowest rank (PartitionState.staleness; -1: ASP, no bound).
const ConsistencyRule& AsyncRule();

// The rule of a partition.
inline const ConsistencyRule& RuleOf(const PartitionState& state) {
  return state.async ? AsyncRule() : BspRule();
}

}  // namespace psd

#endif  // PSD_SERVER_PS_CONSISTENCY_RULE_H_
