// The embedding tables of sparse jobs (issue 25) on the job's servers:
// created when the job starts, dropped with it. Private to the coordinator.
#ifndef PSD_SERVER_COORDINATOR_SPARSE_TABLES_H_
#define PSD_SERVER_COORDINATOR_SPARSE_TABLES_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "common/proto.h"

namespace psd {

// Creates every table of the assignment's model on every server holding a
// table shard (TableReplicas: table shard s on the replicas of job shard
// s), each server with its shards and their replica lists
// (CreateTableRequest.replicas, its own index in each). Idempotent: the
// same table again is acknowledged (created = false). Returns "" or the
// first error, naming the server and the table; *retryable is false when
// the server refused the table as invalid (every server would).
// No-op for a job that is not sparse.
std::string CreateJobTables(const Assignment& assignment,
                            std::chrono::milliseconds timeout,
                            std::chrono::milliseconds budget, bool* retryable);

// With the job's JobConfig.snapshot.every_steps > 0, both ask the servers
// for step snapshots of the tables at the same steps as the dense part's
// (CreateTableRequest.snapshot_every_steps; kept: keep_last + 1, as a
// table may be one interval ahead of its dense part).

// A resumed sparse job's tables: on every server holding a table shard
// (TableReplicas of `assignment`, whose table_replicas must be the new
// ones), drops what is there of each table and restores it from that
// server's step snapshot of `step` (CreateTableRequest.restore_step), with
// the new replica lists. Returns "" or the first error, naming the table,
// the server and the step; *step_missing is true when that error is a
// server without a valid snapshot of that step (NOT_FOUND, DATA_LOSS), so
// an older common step may still do. No-op for a job that is not sparse.
std::string RestoreJobTables(const Assignment& assignment, int64_t step,
                             std::chrono::milliseconds timeout,
                             std::chrono::milliseconds budget,
                             bool* step_missing);

// Drops the assignment's tables on every server listed (NOT_FOUND and
// unreachable servers are logged, not errors). No-op for a job that is not
// sparse.
void DropJobTables(const Assignment& assignment,
                   std::chrono::milliseconds timeout);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_SPARSE_TABLES_H_
