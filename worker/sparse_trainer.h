// Training one rank of a sparse job (issue 25: ModelSpec SPARSE_LR or
// DLRM): the dense part through the parameter servers' partitions
// (ParameterClient, as any job), the embedding tables through
// psd.v1.EmbeddingServer (EmbeddingClient), both on the job's servers.
#ifndef PSD_WORKER_SPARSE_TRAINER_H_
#define PSD_WORKER_SPARSE_TRAINER_H_

#include <atomic>

#include "absl/status/status.h"
#include "common/proto.h"
#include "worker/trainer.h"

namespace psd {

// Trains `assignment.rank()` of a sparse job, step by step:
//   for step s: the batch is the rank's next batch_size examples in
//   EpochOrder(ShardIndices(train, rank, workers), seed, epoch, rank), as
//   a dense job's; pull the dense parameters of step s and the rows the
//   batch's fields hash to (FeatureRow); compute the gradient of the mean
//   logistic loss (SparseModel); push the rows' gradients, then the dense
//   part's.
// Consistency: under BSP every rank pushes its rows of step s to every
// table shard (BspTag), and a shard applies the step's rows once all ranks'
// pushes are in, summed in rank order and averaged (proto/embedding.proto),
// before any rank's push returns; the dense part follows the BSP rule as in
// any job. So a BSP job's tables and parameters are a function of the job
// only (bitwise, for a fixed worker count and BLAS kernel). Under ASP row
// gradients are scaled by 1/workers (as the dense ASP rule scales its
// pushes) and applied as they arrive.
// Rows before dense: a rank's worker that dies between the two has its
// replacement push the step's rows again (a duplicate the shard
// acknowledges) and then the dense part, so no BSP step waits forever.
// Data: dataset "planted-clicks" is generated (worker/click_data.h) from
// the job's seed, identically on every worker; "criteo" is read from
// options.data_dir. Rank 0 evaluates the test set after every epoch: test
// log-loss, AUC and accuracy (progress line and ReportProgressRequest).
// Errors, cancellation and release: as TrainRank.
absl::Status TrainSparseRank(const Assignment& assignment,
                             const TrainerOptions& options,
                             const ProgressSink& report,
                             const std::atomic<bool>* cancel);

}  // namespace psd

#endif  // PSD_WORKER_SPARSE_TRAINER_H_
