// A shard snapshot in memory: what SnapshotStore writes and reads, and
// what ParameterStore captures and restores.
#ifndef PSD_SERVER_SNAPSHOT_SHARD_SNAPSHOT_H_
#define PSD_SERVER_SNAPSHOT_SHARD_SNAPSHOT_H_

#include <cstdint>
#include <vector>

#include "common/proto.h"

namespace psd {

// One partition's state at the snapshot's step (SnapshotManifest.step).
struct PartitionSnapshot {
  // Partition id (Partition.id in the placement).
  int32_t id = 0;
  // float32 weights: exactly the partition's num_elements.
  std::vector<float> weights;
  // The optimizer slots (OptimizerSlots() of them, in server/ps/optimizer.h),
  // one after the other: k * weights.size() floats, k >= 0.
  std::vector<float> slots;
  // ASP/SSP partitions only (empty for BSP ones, which are at the step):
  // per worker rank, its pushes applied (each >= the snapshot's step), and
  // the partition's update count. Stored in the manifest
  // (SnapshotManifest.async_partitions).
  std::vector<int64_t> clocks;
  int64_t updates = 0;
};

// One server's whole state of one job at one step (SnapshotManifest.step).
struct ShardSnapshot {
  // The caller fills job_id, step, view_epoch, config, placement and shards.
  // Write fills partition_ids, partition_crc32, created_unix_ms,
  // total_bytes and async_partitions (from the partitions' clocks; whatever
  // the caller put there is replaced).
  SnapshotManifest manifest;
  // Any order in Write; ascending id from Read.
  std::vector<PartitionSnapshot> partitions;
};

}  // namespace psd

#endif  // PSD_SERVER_SNAPSHOT_SHARD_SNAPSHOT_H_
