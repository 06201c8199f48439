// Push/pull benchmark over loopback: 1 psd parameter server, 1 worker.
//
// One iteration of BM_Psd* is ParameterClient::Push(step) of one dense
// float32 tensor of N bytes followed by Pull(step + 1) of the same tensor
// (workers = 1, so each push applies the step): 2N bytes moved. The baseline,
// BM_GrpcEcho, sends N bytes as one protobuf `bytes` message to a plain gRPC
// echo service and receives them back: also 2N bytes. Both use channels from
// psd::MakeChannel (the same tuned arguments) to the same server process.
//
// The server (ParameterStore + ParameterService + the echo service, one
// StartRpcServer on 127.0.0.1:0) runs in a child process forked at the start
// of main(), before any gRPC state exists, so client and server share no
// allocator or gRPC threads; traffic is real TCP over loopback.
//
// After Google Benchmark's own output, prints a table of the medians (GB/s,
// 10^9 bytes per second) and the ratios psd / echo.
//
// Run: bazel run //tests/bench:push_pull_bench (.bazelrc builds with -O2)
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "server/ps/parameter_service.h"
#include "server/ps/parameter_store.h"
#include "tests/bench/echo.grpc.pb.h"
#include "tests/bench/echo_service.h"
#include "worker/ps_client.h"

namespace psd {
namespace {

constexpr int64_t kMiB = 1 << 20;
// Largest message the benchmark server accepts: a 64 MiB tensor as one
// partition plus its header.
constexpr int kServerMaxMessageBytes = 256 << 20;
constexpr char kAllocator[] =
    "glibc malloc tuned by psd::TuneAllocator(): M_MMAP_MAX=0, "
    "M_TRIM_THRESHOLD=-1 (never trim), M_ARENA_MAX=2 (client and server)";


// Child process: serves until the parent closes `control_fd` (or dies).
// Writes the bound port (int) to `port_fd`, or 0 on failure.
[[noreturn]] void ServeUntilParentCloses(int control_fd, int port_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  Log()->set_level(spdlog::level::warn);
  ParameterStore store;
  ParameterService parameter_service(&store);
  EchoService echo_service;
  RpcServerOptions options;
  options.max_message_bytes = kServerMaxMessageBytes;
  auto server = StartRpcServer(options, {&parameter_service, &echo_service});
  int port = server.ok() ? server->port : 0;
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
  }
  if (write(port_fd, &port, sizeof(port)) != sizeof(port) || port == 0) {
    _exit(1);
  }
  char byte;
  while (read(control_fd, &byte, 1) > 0) {
  }
  server->server->Shutdown(DeadlineIn(std::chrono::seconds(5)));
  _exit(0);
}

// The benchmark server's address, set in main() before any benchmark runs.
std::string& ServerAddress() {
  static std::string* address = new std::string;
  return *address;
}

// A job holding one parameter "bench.weight" of `num_floats` floats on the
// benchmark server, and the worker's client for it. Reused across the
// repetitions of one benchmark instance.
struct PsdJob {
  int64_t tensor_bytes = 0;
  int64_t partition_bytes = 0;
  std::string job_id;
  std::unique_ptr<ParameterServer::Stub> control;
  std::unique_ptr<ParameterClient> client;
  int64_t step = 0;
  int num_partitions = 0;
  std::vector<std::vector<float>> grads;
  std::vector<std::vector<float>> params;

  ~PsdJob() {
    if (control == nullptr) return;
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(30)));
    DropJobRequest request;
    request.set_job_id(job_id);
    DropJobResponse response;
    control->DropJob(&context, request, &response);
  }
};

absl::StatusOr<std::unique_ptr<PsdJob>> CreatePsdJob(int64_t tensor_bytes,
                                                     int64_t partition_bytes) {
  static int next_id = 0;
  auto job = std::make_unique<PsdJob>();
  job->tensor_bytes = tensor_bytes;
  job->partition_bytes = partition_bytes;
  job->job_id = absl::StrCat("bench-", next_id++);
  const int64_t num_floats = tensor_bytes / 4;

  // A valid MLP config (ValidateJobConfig insists); the placement below,
  // not the model, decides what the server holds.
  JobConfig config;
  config.set_name("push-pull-bench");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(16);
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(1);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(1e-9f);
  config.mutable_optimizer()->set_momentum(0.0f);
  config.set_consistency(BSP);
  config.set_batch_size(64);
  config.set_epochs(1);
  config.set_workers(1);
  config.set_seed(1);
  config.set_partition_bytes(partition_bytes);
  ApplyJobConfigDefaults(&config);
  if (absl::Status valid = ValidateJobConfig(config); !valid.ok()) {
    return valid;
  }

  ParameterSpec weight;
  weight.set_name("bench.weight");
  weight.add_shape(num_floats);
  auto placement = BuildPlacement({weight}, partition_bytes, 1);
  if (!placement.ok()) return placement.status();
  job->num_partitions = placement->partitions_size();

  job->control = ParameterServer::NewStub(MakeChannel(ServerAddress()));
  CreateJobRequest create;
  create.set_job_id(job->job_id);
  *create.mutable_config() = config;
  *create.mutable_placement() = *placement;
  create.add_shards(0);
  create.set_view_epoch(1);
  CreateJobResponse created;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(60)));
  grpc::Status status = job->control->CreateJob(&context, create, &created);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("CreateJob: ", status.error_message()));
  }

  Assignment assignment;
  assignment.set_job_id(job->job_id);
  assignment.set_rank(0);
  *assignment.mutable_config() = config;
  *assignment.mutable_placement() = *placement;
  ShardReplicas* shard = assignment.add_shards();
  shard->set_shard(0);
  shard->set_primary("ps0");
  ServerInfo* server = assignment.add_servers();
  server->set_id("ps0");
  server->set_address(ServerAddress());
  assignment.set_view_epoch(1);
  auto client = ParameterClient::Create(assignment, ParameterClientOptions());
  if (!client.ok()) return client.status();
  job->client = *std::move(client);

  job->grads.assign(1, std::vector<float>(num_floats, 1e-3f));
  job->params.assign(1, std::vector<float>(num_floats));
  return job;
}

// The job of the running benchmark instance; replaced when the tensor size
// or partitioning changes, so at most one job's memory is held at a time.
std::unique_ptr<PsdJob>& CurrentJob() {
  static auto* job = new std::unique_ptr<PsdJob>;
  return *job;
}

void RunPsdPushPull(benchmark::State& state, int64_t partition_bytes_or_0) {
  const int64_t bytes = state.range(0) * kMiB;
  const int64_t partition_bytes =
      partition_bytes_or_0 > 0 ? partition_bytes_or_0 : bytes;
  std::unique_ptr<PsdJob>& job = CurrentJob();
  if (job == nullptr || job->tensor_bytes != bytes ||
      job->partition_bytes != partition_bytes) {
    job.reset();
    auto created = CreatePsdJob(bytes, partition_bytes);
    if (!created.ok()) {
      state.SkipWithError(created.status().ToString().c_str());
      return;
    }
    job = *std::move(created);
  }
  for (auto _ : state) {
    absl::Status status = job->client->Push(job->step, job->grads);
    if (status.ok()) status = job->client->Pull(job->step + 1, false,
                                                &job->params);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      job.reset();
      return;
    }
    ++job->step;
  }
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
  state.counters["partitions"] = job->num_partitions;
}

// psd with the default partitioning: ~1 MiB partitions, one RPC each, all in
// flight at once.
void BM_PsdPushPull_1MiBParts(benchmark::State& state) {
  RunPsdPushPull(state, kDefaultPartitionBytes);
}

// psd with the whole tensor as one partition: one message each way.
void BM_PsdPushPull_OnePart(benchmark::State& state) {
  RunPsdPushPull(state, 0);
}

// Plain gRPC: one message of N bytes to the echo service and back.
void BM_GrpcEcho(benchmark::State& state) {
  static auto* stub =
      bench::Echo::NewStub(MakeChannel(ServerAddress())).release();
  const int64_t bytes = state.range(0) * kMiB;
  bench::EchoMessage request;
  request.mutable_data()->assign(bytes, '\x5a');
  bench::EchoMessage response;
  for (auto _ : state) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(60)));
    grpc::Status status = stub->Echo(&context, request, &response);
    if (!status.ok() ||
        response.data().size() != static_cast<size_t>(bytes)) {
      state.SkipWithError(
          absl::StrCat("Echo: ", status.error_message(), " (",
                       response.data().size(), " bytes back)")
              .c_str());
      return;
    }
  }
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
}

void Sizes(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(16)->Arg(64);  // MiB
  b->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Repetitions(5)
      ->ReportAggregatesOnly(true);
}

BENCHMARK(BM_GrpcEcho)->Apply(Sizes);
BENCHMARK(BM_PsdPushPull_1MiBParts)->Apply(Sizes);
BENCHMARK(BM_PsdPushPull_OnePart)->Apply(Sizes);

// Console output as usual, and collects each benchmark's median throughput
// (or the single run's, with --benchmark_repetitions=1) for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // Colours only on a terminal (a custom reporter ignores
  // --benchmark_color).
  RatioReporter()
      : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular
                                              : OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      auto rate = run.counters.find("bytes_per_second");
      if (rate == run.counters.end()) continue;
      Key key{run.run_name.function_name, std::stoll(run.run_name.args)};
      if (run.run_type == Run::RT_Aggregate) {
        if (run.aggregate_name == "median") medians_[key] = rate->second.value;
      } else {
        singles_[key].push_back(rate->second.value);
      }
    }
  }

  // Prints the table; returns false when a cell is missing (a benchmark
  // filtered out or failed).
  bool PrintTable() const {
    std::printf(
        "\nPush/pull over loopback: medians, GB/s = 1e9 bytes/s of "
        "push+pull (2 x size per iteration)\n");
    std::printf("allocator: %s\n", kAllocator);
    std::printf("%8s %10s %14s %10s %14s %10s\n", "size_MiB", "echo_GB/s",
                "psd_1MiB_GB/s", "psd/echo", "psd_1part_GB/s",
                "1part/echo");
    std::vector<int64_t> sizes;
    for (const auto& [key, value] : Values()) {
      if (std::find(sizes.begin(), sizes.end(), key.second) == sizes.end()) {
        sizes.push_back(key.second);
      }
    }
    std::sort(sizes.begin(), sizes.end());
    bool complete = !sizes.empty();
    const std::map<Key, double> values = Values();
    for (int64_t size : sizes) {
      auto get = [&](const char* name) {
        auto it = values.find({name, size});
        return it == values.end() ? -1.0 : it->second / 1e9;
      };
      const double echo = get("BM_GrpcEcho");
      const double parts = get("BM_PsdPushPull_1MiBParts");
      const double one = get("BM_PsdPushPull_OnePart");
      if (echo <= 0 || parts <= 0 || one <= 0) {
        complete = false;
        std::printf("%8lld  (incomplete: a benchmark was filtered out or "
                    "failed)\n",
                    static_cast<long long>(size));
        continue;
      }
      std::printf("%8lld %10.3f %14.3f %10.3f %14.3f %10.3f\n",
                  static_cast<long long>(size), echo, parts, parts / echo, one,
                  one / echo);
    }
    return complete;
  }

 private:
  using Key = std::pair<std::string, int64_t>;  // (function, size in MiB)

  // Medians where there were repetitions, otherwise the median of the
  // single runs.
  std::map<Key, double> Values() const {
    std::map<Key, double> values = medians_;
    for (const auto& [key, runs] : singles_) {
      if (values.count(key)) continue;
      std::vector<double> sorted = runs;
      std::sort(sorted.begin(), sorted.end());
      values[key] = sorted[sorted.size() / 2];
    }
    return values;
  }

  std::map<Key, double> medians_;
  std::map<Key, std::vector<double>> singles_;
};

int Main(int argc, char** argv) {
  TuneAllocator();  // first, and before fork(): the child inherits it
  int control[2], port_pipe[2];
  if (pipe(control) != 0 || pipe(port_pipe) != 0) {
    std::perror("pipe");
    return 1;
  }
  const pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  if (child == 0) {
    close(control[1]);
    close(port_pipe[0]);
    ServeUntilParentCloses(control[0], port_pipe[1]);
  }
  close(control[0]);
  close(port_pipe[1]);
  int port = 0;
  if (read(port_pipe[0], &port, sizeof(port)) != sizeof(port) || port == 0) {
    std::fprintf(stderr, "benchmark server did not start\n");
    return 1;
  }
  ServerAddress() = absl::StrCat("127.0.0.1:", port);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("allocator", kAllocator);
  benchmark::AddCustomContext(
      "server", absl::StrCat("psd ParameterServer + echo in child process ",
                             child, ", ", ServerAddress(), " (loopback TCP)"));
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  CurrentJob().reset();
  const bool complete = reporter.PrintTable();
  benchmark::Shutdown();

  close(control[1]);  // the server shuts down
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  if (!complete) {
    std::fprintf(stderr, "warning: ratio table incomplete\n");
  }
  return 0;
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) { return psd::Main(argc, argv); }
