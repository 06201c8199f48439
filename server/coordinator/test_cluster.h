// For CoordinatorState's tests: CoordinatorState in-process, with a real
// parameter server (ParameterStore + ParameterService on 127.0.0.1:0) that
// the coordinator sets jobs up on over gRPC. Workers are only ids here: the
// coordinator never dials them, so the test plays their part (heartbeats,
// progress reports) by calling the state directly. Every wait polls the
// state with a bounded deadline.
//
// The helpers use Catch2's REQUIRE/CHECK, so they only run inside a
// TEST_CASE.
#ifndef PSD_SERVER_COORDINATOR_TEST_CLUSTER_H_
#define PSD_SERVER_COORDINATOR_TEST_CLUSTER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "server/coordinator/coordinator_state.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"

namespace psd {
namespace coordinator_test {

inline constexpr absl::Duration kWaitLimit = absl::Seconds(10);

// MLP 784-[16]-10 on the first 1000 Fashion-MNIST examples.
JobConfig SmallConfig(int workers, const std::string& name = "coord-test");

CoordinatorOptions FastOptions(int heartbeat_timeout_ms = 60000);

bool Contains(const std::string& s, const std::string& part);

// Calls `step` then checks `done` every millisecond until `done` holds or
// `limit` passes. Returns whether `done` held.
bool PollUntil(
    const std::function<bool()>& done,
    const std::function<void()>& step = [] {},
    absl::Duration limit = kWaitLimit);

// A ParameterServer service that forwards to a real ParameterService, but
// can hold CreateJob calls until released: makes the coordinator's job
// set-up window as long as a test needs.
class GatedParameterService final
    : public ParameterServer::WithCallbackMethod_Push<
          ParameterServer::WithCallbackMethod_Pull<ParameterServer::Service>> {
 public:
  explicit GatedParameterService(ParameterService* inner) : inner_(inner) {}

  void Close();
  void Open();
  int waiting();
  int completed();

  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const PushRequest* request,
                                 PushResponse* response) override;
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const PullRequest* request,
                                 PullResponse* response) override;
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const CreateJobRequest* request,
                         CreateJobResponse* response) override;
  grpc::Status DropJob(grpc::ServerContext* context,
                       const DropJobRequest* request,
                       DropJobResponse* response) override;
  grpc::Status SetView(grpc::ServerContext* context,
                       const SetViewRequest* request,
                       SetViewResponse* response) override;
  grpc::Status GetServerStatus(grpc::ServerContext* context,
                               const GetServerStatusRequest* request,
                               ServerStatus* response) override;

 private:
  ParameterService* const inner_;
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int completed_ ABSL_GUARDED_BY(mu_) = 0;
};

// One parameter server (registered), a coordinator state (started), and
// helpers that play the workers.
class Cluster {
 public:
  explicit Cluster(CoordinatorOptions options);
  ~Cluster();

  // `model_kinds`: RegisterRequest.model_kinds (empty: MLP).
  std::string AddWorker(std::vector<ModelSpec::Kind> model_kinds = {});

  HeartbeatResponse Heartbeat(const std::string& member_id);

  JobState State(const std::string& job_id);

  JobStatus Job(const std::string& job_id);

  // The worker's entry in the cluster view, or null when it is not there.
  std::unique_ptr<WorkerInfo> ViewOf(const std::string& worker_id);

  // Heartbeats the server and `workers` every millisecond until each worker
  // has received an assignment (bounded). Returns the assignments by worker
  // id; fails the test if a heartbeat says "cancelled" meanwhile.
  std::map<std::string, Assignment> HeartbeatUntilAssigned(
      const std::vector<std::string>& workers);

  // Registers `n` workers, submits SmallConfig(n) and waits until it runs.
  // Returns the job id; `by_rank` gets the worker ids by rank.
  std::string StartJob(int n, std::vector<std::string>* by_rank);

  absl::StatusOr<ReportProgressResponse> Report(
      const std::string& member_id, const std::string& job_id, int32_t rank,
      const std::function<void(ReportProgressRequest*)>& fill = {});

  // Both ranks report done; the job must then be SUCCEEDED.
  void FinishJob(const std::string& job_id,
                 const std::vector<std::string>& by_rank);

  // A Pull of partition 0 at the latest step: the server holds the job.
  grpc::Status PullLatest(const std::string& job_id);

  GatedParameterService& gate() { return gated_; }

  std::string server_address;
  std::string server_id;
  std::unique_ptr<ParameterServer::Stub> parameter_server;

 private:
  ParameterStore store_;
  ParameterService service_;
  GatedParameterService gated_;
  RpcServer rpc_;
  int workers_added_ = 0;

 public:
  // Declared last: destroyed (scheduler stopped) before the server goes.
  CoordinatorState state;
};

}  // namespace coordinator_test
}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_TEST_CLUSTER_H_
