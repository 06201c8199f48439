// The state of one partition held by a ParameterStore (private to the
// parameter_store library): its weights and optimizer slots, the pushes
// collected for its next update, its replication and its clocks.
#ifndef PSD_SERVER_PS_PARTITION_STATE_H_
#define PSD_SERVER_PS_PARTITION_STATE_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace psd {

// One partition's state. Protected by its Job's mu.
struct PartitionState {
  // Constant after construction: the consistency model of the partition's
  // parameter (ConsistencyOf). async: ASP or SSP, pushes applied as they
  // arrive; staleness: SSP's bound, -1 for ASP (unused under BSP). The rule
  // that follows from them: RuleOf (consistency_rule.h).
  bool async = false;
  int64_t staleness = -1;
  int64_t num_elements = 0;
  std::vector<float> weights;
  // Optimizer slots: OptimizerSlots(config.optimizer()) * num_elements.
  std::vector<float> slots;
  // Updates applied so far.
  int64_t step = 0;
  // Gradients of `step` received so far, by rank; buffers reused each step.
  std::vector<std::vector<float>> pending;
  std::vector<bool> received;
  int32_t received_count = 0;
  // Sum of pending gradients (reused buffer); the averaged gradient while
  // the step is being replicated.
  std::vector<float> sum;
  // The shard this partition is placed on.
  int32_t shard = 0;
  // Primary: the step's averaged gradient is with the backups; `awaiting`
  // are those that have not acknowledged it yet, since `replicating_since`.
  bool replicating = false;
  absl::Time replicating_since;
  std::set<std::string> awaiting;
  // Joining backup: the state transfer has not arrived yet.
  bool installing = false;
  // The weights before the last update (after *previous_step updates), so
  // a pull of that step can still be answered; no value: none kept. (Not a
  // -1 sentinel: a pull's step is a peer's number, and -1 must match nothing.)
  std::vector<float> previous;
  std::optional<int64_t> previous_step;
  // ASP/SSP only (empty under BSP). Per worker rank: its pushes applied to
  // `weights` (the rank's clock on this partition; the dedup table).
  std::vector<int64_t> clocks;
  // Primary: per rank, its pushes taken (applied, in flight or queued);
  // elsewhere equal to `clocks`.
  std::vector<int64_t> accepted;
  // Primary, while replicating: `clocks` once the update in flight is
  // applied (a backup: those of the update being applied).
  std::vector<int64_t> update_clocks;
  // Primary: pushes taken while an update was being replicated, each scaled
  // by 1/workers and summed in arrival order: the next update.
  std::vector<float> queued;
  int32_t queued_count = 0;
  // The replica check: the newest step at which this partition's replicas
  // were found equal (a primary: every backup's checksum matched; a backup:
  // its own matched the primary's); 0: none yet.
  int64_t verified_step = 0;
  // Backup: why the replica check found this replica different from its
  // primary; empty: it was not. It refuses replication until a state
  // transfer (InstallPartition) replaces it.
  std::string diverged;
};

// Voids what the partition collected as a primary (received pushes, the
// update being replicated, queued ASP/SSP pushes): the shard's next primary
// gets the workers' pushes again.
inline void DiscardPending(PartitionState* state) {
  state->replicating = false;
  state->awaiting.clear();
  state->received.assign(state->received.size(), false);
  state->received_count = 0;
  state->queued_count = 0;
  state->accepted = state->clocks;
}

}  // namespace psd

#endif  // PSD_SERVER_PS_PARTITION_STATE_H_
