// cluster_push_pull_client: the client side of
// tests/bench/cluster_push_pull_bench.sh, a push+pull benchmark against real
// psd_coordinator and psd_server processes. One binary, three modes:
//
//   --mode=worker       Registers with the coordinator as a worker (like
//                       psd_worker: common/membership.h), and for every
//                       rank of a job it is assigned (in a heartbeat), runs
//                       the benchmark the job's name asks for, writes the
//                       result to --out_dir/<job>.rank<r>.json and reports the
//                       rank done (so the job SUCCEEDS and the worker is idle
//                       again for the next job). Job names:
//                         "tput": ParameterClient::Push(step) of every
//                           parameter, then Pull(step + 1) of every
//                           parameter (BSP: waits for every rank's push of
//                           the step), --warmup steps, then --reps timed
//                           repetitions of --steps steps each;
//                         "lat": rank 0 alone pushes, then pulls, the one
//                           partition of "layer0.bias" (1 KiB for a hidden
//                           layer of 256) with raw ParameterServer/Push and
//                           /Pull calls, --lat_iters times after --warmup;
//                           each round trip timed on its own.
//   --mode=echo_server  Serves the plain gRPC echo (tests/bench/echo.proto)
//                       on 127.0.0.1:0, writes the port to --port_file, and
//                       serves until SIGTERM.
//   --mode=echo         The baseline: rank --rank of --workers sends --floats
//                       float32s (as one `bytes` message) to the echo server
//                       --echo_servers[rank % S] and receives them back, with
//                       the same warm-up and repetitions as "tput"; writes
//                       --out. The ranks run in separate processes, started
//                       together.
//
// Every channel is psd::MakeChannel's (the same tuned arguments as the
// worker's). Result files are one JSON object each (see WriteResult).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/member_flags.h"
#include "common/membership.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "common/status.h"
#include "tests/bench/echo.grpc.pb.h"
#include "tests/bench/echo_service.h"
#include "worker/ps_client.h"

ABSL_FLAG(std::string, mode, "worker", "worker, echo_server or echo.");
ABSL_FLAG(std::string, port_file, "",
          "worker and echo_server: write the bound port here once ready.");
ABSL_FLAG(std::string, out_dir, "",
          "worker: folder for the result files <job>.rank<r>.json.");
ABSL_FLAG(std::string, out, "", "echo: the result file.");
ABSL_FLAG(int, warmup, 2, "Untimed steps (lat: round trips) first.");
ABSL_FLAG(int, reps, 5, "tput and echo: timed repetitions.");
ABSL_FLAG(int, steps, 1,
          "tput and echo: steps per repetition; 0 = choose so that a "
          "repetition moves about 64 MiB per rank.");
ABSL_FLAG(int, lat_iters, 1000, "lat: timed round trips.");
ABSL_FLAG(std::string, echo_servers, "",
          "echo: comma-separated host:port of the echo servers.");
ABSL_FLAG(int, rank, 0, "echo: this client's rank.");
ABSL_FLAG(int64_t, floats, 0, "echo: float32s per message.");

namespace psd {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Steps per repetition: --steps, or (0) enough for ~64 MiB per rank.
int StepsPerRep(int64_t floats) {
  const int steps = absl::GetFlag(FLAGS_steps);
  if (steps > 0) return steps;
  return static_cast<int>(std::max<int64_t>(1, (int64_t{16} << 20) / floats));
}

// One result file: {"kind": ..., "rank": r, "floats": F, "tensors": T,
// "partitions": P, "steps_per_rep": K, "rep_seconds": [...],
// "round_trip_us": [...]} (the last one for "lat" only, the rep fields for
// "tput" and "echo").
struct Result {
  std::string kind;
  int rank = 0;
  int64_t floats = 0;
  int tensors = 0;
  int partitions = 0;
  int steps_per_rep = 0;
  std::vector<double> rep_seconds;
  std::vector<double> round_trip_us;
};

absl::Status WriteResult(const Result& r, const std::string& path) {
  std::string json = absl::StrCat(
      "{\"kind\": \"", r.kind, "\", \"rank\": ", r.rank,
      ", \"floats\": ", r.floats, ", \"tensors\": ", r.tensors,
      ", \"partitions\": ", r.partitions,
      ", \"steps_per_rep\": ", r.steps_per_rep, ", \"rep_seconds\": [",
      absl::StrJoin(r.rep_seconds, ", "), "], \"round_trip_us\": [",
      absl::StrJoin(r.round_trip_us, ", "), "]}\n");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << json;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp));
  }
  return absl::OkStatus();
}

// "tput": every rank pushes all parameters and pulls them back, step by step.
absl::StatusOr<Result> RunThroughput(const Assignment& a,
                                     const std::atomic<bool>* cancel) {
  ParameterClientOptions options;
  options.cancel = cancel;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ParameterClient> client,
                       ParameterClient::Create(a, options));
  Result result;
  result.kind = "tput";
  result.rank = a.rank();
  result.partitions = a.placement().partitions_size();
  std::vector<std::vector<float>> grads, params;
  for (int64_t n : client->parameter_sizes()) {
    result.floats += n;
    ++result.tensors;
    grads.emplace_back(n, 1e-3f);
    params.emplace_back(n, 0.0f);
  }
  result.steps_per_rep = StepsPerRep(result.floats);
  int64_t step = a.start_step();
  auto one_step = [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(client->Push(step, grads));
    PSD_RETURN_IF_ERROR(client->Pull(step + 1, false, &params));
    ++step;
    return absl::OkStatus();
  };
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    PSD_RETURN_IF_ERROR(one_step());
  }
  for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < result.steps_per_rep; ++i) {
      PSD_RETURN_IF_ERROR(one_step());
    }
    result.rep_seconds.push_back(SecondsSince(start));
  }
  return result;
}

// "lat": raw Push and Pull of the one partition of "layer0.bias".
absl::StatusOr<Result> RunLatency(const Assignment& a) {
  Result result;
  result.kind = "lat";
  result.rank = a.rank();
  if (a.rank() != 0) return result;  // Only rank 0 measures.
  const Placement& placement = a.placement();
  int param = -1;
  for (int i = 0; i < placement.parameters_size(); ++i) {
    if (placement.parameters(i).name() == "layer0.bias") param = i;
  }
  const Partition* part = nullptr;
  for (const Partition& p : placement.partitions()) {
    if (p.parameter() == param) {
      if (part != nullptr) {
        return absl::InvalidArgumentError("layer0.bias has several partitions");
      }
      part = &p;
    }
  }
  if (part == nullptr) {
    return absl::InvalidArgumentError("the model has no layer0.bias");
  }
  std::string primary;
  for (const ShardReplicas& s : a.shards()) {
    if (s.shard() == part->shard()) primary = s.primary();
  }
  std::string address;
  for (const ServerInfo& s : a.servers()) {
    if (s.id() == primary) address = s.address();
  }
  if (address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no address for the primary of shard ", part->shard()));
  }
  result.floats = part->num_elements();
  result.tensors = 1;
  result.partitions = 1;
  std::unique_ptr<ParameterServer::Stub> stub =
      ParameterServer::NewStub(MakeChannel(address));

  PushRequest push;
  push.set_job_id(a.job_id());
  push.set_worker_rank(a.rank());
  push.set_view_epoch(a.view_epoch());
  PartitionTensor* g = push.add_gradients();
  g->set_partition_id(part->id());
  g->mutable_tensor()->set_dtype(FLOAT32);
  g->mutable_tensor()->add_shape(part->num_elements());
  const std::vector<float> grad(part->num_elements(), 1e-3f);
  g->mutable_tensor()->set_data(grad.data(), grad.size() * sizeof(float));
  PullRequest pull;
  pull.set_job_id(a.job_id());
  pull.set_worker_rank(a.rank());
  pull.set_view_epoch(a.view_epoch());
  pull.add_partition_ids(part->id());
  PushResponse pushed;
  PullResponse pulled;

  int64_t step = a.start_step();
  auto round_trip = [&]() -> absl::Status {
    push.set_step(step);
    grpc::ClientContext push_context;
    push_context.set_deadline(DeadlineIn(std::chrono::seconds(30)));
    grpc::Status status = stub->Push(&push_context, push, &pushed);
    if (!status.ok()) {
      return absl::UnavailableError(
          absl::StrCat("Push to ", address, ": ", status.error_message()));
    }
    pull.set_step(step + 1);
    grpc::ClientContext pull_context;
    pull_context.set_deadline(DeadlineIn(std::chrono::seconds(30)));
    status = stub->Pull(&pull_context, pull, &pulled);
    if (!status.ok()) {
      return absl::UnavailableError(
          absl::StrCat("Pull from ", address, ": ", status.error_message()));
    }
    if (pulled.parameters_size() != 1 ||
        pulled.parameters(0).tensor().data().size() !=
            static_cast<size_t>(part->num_elements()) * sizeof(float)) {
      return absl::DataLossError("Pull returned the wrong partition size");
    }
    ++step;
    return absl::OkStatus();
  };
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    PSD_RETURN_IF_ERROR(round_trip());
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_lat_iters); ++i) {
    const Clock::time_point start = Clock::now();
    PSD_RETURN_IF_ERROR(round_trip());
    result.round_trip_us.push_back(SecondsSince(start) * 1e6);
  }
  return result;
}

// Takes assignments from heartbeats and runs them one at a time on its own
// thread. Thread-safe.
class BenchAgent {
 public:
  explicit BenchAgent(std::string out_dir) : out_dir_(std::move(out_dir)) {}

  ~BenchAgent() { Stop(); }

  // Cancels the benchmark in progress and joins the thread. Call before the
  // Membership passed to Start() is destroyed. Idempotent.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    cancel_ = true;
    if (thread_.joinable()) thread_.join();
  }

  void Start(Membership* membership) {
    membership_ = membership;
    thread_ = std::thread([this] { Run(); });
  }

  void OnHeartbeat(const HeartbeatResponse& response) {
    if (!response.has_assignment()) return;
    absl::MutexLock lock(&mu_);
    const std::string& id = response.assignment().job_id();
    if (!seen_.insert(id).second) return;
    queue_.push_back(response.assignment());
  }

 private:
  void Run() {
    while (true) {
      Assignment a;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](BenchAgent* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
              return b->stopping_ || !b->queue_.empty();
            },
            this));
        if (stopping_) return;
        a = std::move(queue_.front());
        queue_.pop_front();
      }
      Log()->info("job {}: rank {} ({})", a.job_id(), a.rank(),
                  a.config().name());
      absl::StatusOr<Result> result =
          a.config().name() == "lat" ? RunLatency(a)
          : a.config().name() == "tput"
              ? RunThroughput(a, &cancel_)
              : absl::InvalidArgumentError(
                    absl::StrCat("job name \"", a.config().name(),
                                 "\": want \"tput\" or \"lat\""));
      if (cancel_) return;  // Stop(): nothing to report
      ReportProgressRequest report;
      report.set_job_id(a.job_id());
      report.set_rank(a.rank());
      if (result.ok()) {
        absl::Status written =
            WriteResult(*result, absl::StrCat(out_dir_, "/", a.job_id(),
                                              ".rank", a.rank(), ".json"));
        if (!written.ok()) result = written;
      }
      if (result.ok()) {
        report.set_done(true);
      } else {
        Log()->error("job {}: rank {}: {}", a.job_id(), a.rank(),
                     result.status().ToString());
        report.set_error(result.status().ToString());
      }
      report.set_member_id(membership_->member_id());
      ReportProgressResponse response;
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
      grpc::Status status = membership_->coordinator()->ReportProgress(
          &context, report, &response);
      if (!status.ok()) {
        Log()->error("job {}: ReportProgress: {}", a.job_id(),
                     status.error_message());
      }
    }
  }

  // Constant after construction.
  const std::string out_dir_;
  Membership* membership_ = nullptr;
  std::atomic<bool> cancel_{false};
  std::thread thread_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Assignment> queue_ ABSL_GUARDED_BY(mu_);
  // Jobs already queued (a job's assignment comes with every heartbeat).
  std::set<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

int RunWorker() {
  if (absl::GetFlag(FLAGS_out_dir).empty()) {
    return StartupError(absl::InvalidArgumentError("--out_dir is required"));
  }
  absl::StatusOr<MembershipOptions> member =
      MembershipOptionsFromFlags(MembershipOptions::Role::kWorker);
  if (!member.ok()) return StartupError(member.status());
  // Health and reflection only, as psd_worker: the address to advertise.
  RpcServerOptions rpc_options;
  auto rpc = StartRpcServer(rpc_options, {});
  if (!rpc.ok()) return StartupError(rpc.status());
  BenchAgent agent(absl::GetFlag(FLAGS_out_dir));
  MembershipOptions options = *std::move(member);
  options.advertised_address =
      AdvertisedAddress(rpc_options.listen_address, rpc->port);
  Membership membership(
      options, [&agent](const HeartbeatResponse& r) { agent.OnHeartbeat(r); });
  absl::Status joined = membership.Start();
  if (!joined.ok()) {
    rpc->server->Shutdown();
    return StartupError(joined);
  }
  agent.Start(&membership);
  const int code = ServeUntilShutdownSignal(
      &*rpc, absl::GetFlag(FLAGS_port_file), std::chrono::seconds(1));
  agent.Stop();  // its thread uses `membership`, destroyed first
  return code;
}

int RunEchoServer() {
  EchoService echo;
  RpcServerOptions options;
  options.max_message_bytes = 512 << 20;
  auto rpc = StartRpcServer(options, {&echo});
  if (!rpc.ok()) return StartupError(rpc.status());
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(1));
}

int RunEcho() {
  std::vector<std::string> servers =
      absl::StrSplit(absl::GetFlag(FLAGS_echo_servers), ',', absl::SkipEmpty());
  const int64_t floats = absl::GetFlag(FLAGS_floats);
  if (servers.empty() || floats <= 0 || absl::GetFlag(FLAGS_out).empty()) {
    return StartupError(absl::InvalidArgumentError(
        "echo needs --echo_servers, --floats > 0 and --out"));
  }
  Result result;
  result.kind = "echo";
  result.rank = absl::GetFlag(FLAGS_rank);
  result.floats = floats;
  result.tensors = 1;
  result.partitions = 1;
  result.steps_per_rep = StepsPerRep(floats);
  const std::string address = servers[result.rank % servers.size()];
  std::unique_ptr<bench::Echo::Stub> stub =
      bench::Echo::NewStub(MakeChannel(address));
  bench::EchoMessage request, response;
  request.mutable_data()->assign(floats * sizeof(float), '\x5a');
  auto one_step = [&]() -> absl::Status {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(60)));
    grpc::Status status = stub->Echo(&context, request, &response);
    if (!status.ok() || response.data().size() != request.data().size()) {
      return absl::UnavailableError(
          absl::StrCat("Echo to ", address, ": ", status.error_message(), " (",
                       response.data().size(), " bytes back)"));
    }
    return absl::OkStatus();
  };
  absl::Status status;
  for (int i = 0; status.ok() && i < absl::GetFlag(FLAGS_warmup); ++i) {
    status = one_step();
  }
  for (int rep = 0; status.ok() && rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const Clock::time_point start = Clock::now();
    for (int i = 0; status.ok() && i < result.steps_per_rep; ++i) {
      status = one_step();
    }
    result.rep_seconds.push_back(SecondsSince(start));
  }
  if (status.ok()) status = WriteResult(result, absl::GetFlag(FLAGS_out));
  if (!status.ok()) {
    Log()->error("{}", status.ToString());
    return 1;
  }
  return 0;
}

int Main() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "worker") return RunWorker();
  if (mode == "echo_server") return RunEchoServer();
  if (mode == "echo") return RunEcho();
  return StartupError(absl::InvalidArgumentError(
      absl::StrCat("--mode: worker, echo_server or echo, got \"", mode, "\"")));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"cluster_push_pull_client", "bench",
       "The client of tests/bench/cluster_push_pull_bench.sh.\n"
       "  cluster_push_pull_client --mode=worker --coordinator=HOST:PORT "
       "--out_dir=DIR\n"
       "  cluster_push_pull_client --mode=echo_server --port_file=FILE\n"
       "  cluster_push_pull_client --mode=echo --echo_servers=A,B --rank=R "
       "--floats=N --out=FILE"},
      psd::Main);
}
