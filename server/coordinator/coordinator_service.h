// The coordinator's two gRPC services, psd.v1.Coordinator (membership) and
// psd.v1.JobService (job control), over one CoordinatorState.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_

#include <atomic>

#include "common/proto.h"
#include "server/coordinator/coordinator_state.h"

namespace psd {

// The control plane: registration, heartbeats, progress and the cluster
// view. Served with gRPC's callback API, so these calls never wait for a
// thread of the sync pool that JobService's calls (user traffic) use: a
// burst of job-API calls that exhausts that pool (RESOURCE_EXHAUSTED
// "Server Threadpool Exhausted") cannot make a member miss its heartbeats.
// Each handler only takes CoordinatorState's lock (no I/O, no RPC).
// Thread-safe; does not own `state`.
class MembershipService final : public Coordinator::CallbackService {
 public:
  explicit MembershipService(CoordinatorState* state) : state_(state) {}
  grpc::ServerUnaryReactor* RegisterServer(grpc::CallbackServerContext*,
                                           const RegisterRequest*,
                                           RegisterResponse*) override;
  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext*,
                                           const RegisterRequest*,
                                           RegisterResponse*) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext*,
                                      const HeartbeatRequest*,
                                      HeartbeatResponse*) override;
  grpc::ServerUnaryReactor* ReportProgress(grpc::CallbackServerContext*,
                                           const ReportProgressRequest*,
                                           ReportProgressResponse*) override;
  grpc::ServerUnaryReactor* GetClusterView(grpc::CallbackServerContext*,
                                           const GetClusterViewRequest*,
                                           ClusterView*) override;

 private:
  CoordinatorState* const state_;
};

// Thread-safe; does not own `state`.
class JobControlService final : public JobService::Service {
 public:
  explicit JobControlService(CoordinatorState* state) : state_(state) {}
  grpc::Status SubmitJob(grpc::ServerContext*, const JobConfig*,
                         SubmitJobResponse*) override;
  grpc::Status GetJob(grpc::ServerContext*, const GetJobRequest*,
                      JobStatus*) override;
  grpc::Status ListJobs(grpc::ServerContext*, const ListJobsRequest*,
                        ListJobsResponse*) override;
  grpc::Status CancelJob(grpc::ServerContext*, const CancelJobRequest*,
                         JobStatus*) override;
  // Holds a handler thread per open watch, so at most kMaxWatches are open
  // at once; more get RESOURCE_EXHAUSTED.
  grpc::Status WatchJob(grpc::ServerContext*, const GetJobRequest*,
                        grpc::ServerWriter<JobStatus>*) override;
  grpc::Status DeleteJob(grpc::ServerContext*, const DeleteJobRequest*,
                         DeleteJobResponse*) override;
  grpc::Status SnapshotJob(grpc::ServerContext*, const SnapshotJobRequest*,
                           SnapshotJobResponse*) override;
  grpc::Status ReshardJob(grpc::ServerContext*, const ReshardJobRequest*,
                          ReshardJobResponse*) override;

  static constexpr int kMaxWatches = 16;

 private:
  CoordinatorState* const state_;
  std::atomic<int> watches_{0};
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_
