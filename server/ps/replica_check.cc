// ParameterStore's replica check (see "Replica check" in
// docs/OPERATIONS.md): a primary sends its partitions' checksums with the
// replication of some updates (StateChecksum, ReplicaCheckDue), a backup
// compares them with its own (CheckReplica) and a mismatch stops it until a
// state transfer; the test hook that makes one (MaybeCorruptForTest).
#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/process.h"
#include "common/quote.h"
#include "server/ps/parameter_store.h"
#include "server/ps/parameter_store_internal.h"
#include "zlib.h"

namespace psd {

// The replica check's checksum of a partition's state: CRC-32 (zlib) of its
// weights, its optimizer slots and (ASP/SSP) its clocks, as their bytes in
// memory (little-endian on every platform psd builds for).
uint32_t StateChecksum(const PartitionState& state) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  const auto add = [&crc](const void* data, size_t bytes) {
    // zlib returns the initial value for a null buffer, whatever `crc` is.
    if (bytes > 0) crc = crc32_z(crc, static_cast<const Bytef*>(data), bytes);
  };
  add(state.weights.data(), state.weights.size() * sizeof(float));
  add(state.slots.data(), state.slots.size() * sizeof(float));
  if (state.async) add(state.clocks.data(), state.clocks.size() * sizeof(int64_t));
  return static_cast<uint32_t>(crc);
}

// Whether the replication of update `step` carries the replica check: every
// `every` steps (0: never) and at the snapshot steps of the job's policy.
bool ReplicaCheckDue(const ParameterStore::Job& job, int64_t step,
                     int64_t every) {
  if (step <= 0) return false;
  const int64_t snapshot_every = job.config.snapshot().every_steps();
  return (every > 0 && step % every == 0) ||
         (snapshot_every > 0 && step % snapshot_every == 0);
}

// The replica check: the oldest verified step over the partitions the
// server leads (all it holds when it leads none).
int64_t VerifiedStep(const ParameterStore::Job& job)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(job.mu) {
  bool any_primary = false;
  for (const auto& [id, state] : job.partitions) {
    any_primary |= job.roles.at(state.shard).role == ReplicaRole::kPrimary;
  }
  int64_t verified = INT64_MAX;
  for (const auto& [id, state] : job.partitions) {
    if (any_primary && job.roles.at(state.shard).role != ReplicaRole::kPrimary) {
      continue;
    }
    verified = std::min(verified, state.verified_step);
  }
  return verified == INT64_MAX ? 0 : verified;
}

absl::Status ParameterStore::CheckReplica(Job* job,
                                          const ReplicateRequest& request) {
  if (request.checksums_size() != 0 &&
      request.checksums_size() != request.gradients_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checksums: ", request.checksums_size(), " given for ",
        request.gradients_size(), " gradients"));
  }
  for (int i = 0; i < request.gradients_size(); ++i) {
    const int32_t id = request.gradients(i).partition_id();
    PartitionState& state = job->partitions[id];
    if (!state.diverged.empty()) return absl::DataLossError(state.diverged);
    if (request.checksums_size() == 0 || request.step() != state.step) continue;
    replica_checks_.fetch_add(1, std::memory_order_relaxed);
    const uint32_t own = StateChecksum(state);
    if (own == request.checksums(i)) {
      state.verified_step = std::max(state.verified_step, request.step());
      continue;
    }
    state.diverged = absl::StrFormat(
        "replica check: job %s, shard %d, partition %d at step %d: this "
        "backup's state has checksum crc32:%08x, its primary's crc32:%08x; "
        "it needs a state transfer",
        Quote(job->id), state.shard, id, request.step(), own,
        request.checksums(i));
    replica_mismatches_.fetch_add(1, std::memory_order_relaxed);
    Log()->error("{}", state.diverged);
    return absl::DataLossError(state.diverged);
  }
  return absl::OkStatus();
}

ParameterStore::ReplicaCheckCounts ParameterStore::ReplicaChecks() const {
  ReplicaCheckCounts counts;
  counts.checks = replica_checks_.load(std::memory_order_relaxed);
  counts.mismatches = replica_mismatches_.load(std::memory_order_relaxed);
  return counts;
}

void ParameterStore::MaybeCorruptForTest(const Job& job, int32_t partition_id,
                                         PartitionState* state) {
  if (!options_.test_corrupt_backup_at_step.has_value() ||
      state->step != *options_.test_corrupt_backup_at_step ||
      state->weights.empty()) {
    return;
  }
  state->weights[0] += 1.0f;
  Log()->warn("job {}: shard {}: partition {}: TEST HOOK "
              "--test_corrupt_backup_at_step: this backup changed its weights "
              "at step {} behind its primary's back",
              Quote(job.id), state->shard, partition_id, state->step);
}

}  // namespace psd
