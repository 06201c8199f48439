// scale_bench: N simulated workers in one process against a real
// psd_coordinator and real psd_servers (issue 19; driven by
// tests/bench/scale_bench.sh, results in docs/SCALING.md).
//
// Each simulated worker is what a psd_worker is to the cluster, minus the
// compute: its own Membership (registration and heartbeats on its own
// channel, hence its own TCP connection: common/rpc.h gives every channel a
// private subchannel pool), and, once it has a rank, its own
// ParameterClient (own channels to every server, callback API, failover
// through the heartbeats' views) pushing a gradient and pulling the
// parameters back every step, BSP. Threads: two per simulated worker
// (heartbeats, steps), all blocked on gRPC most of the time.
//
// The run, in order:
//   1. registers the N workers; RSS of the coordinator before and after
//      (--coordinator_pid): memory per registered worker;
//   2. a quiet interval (--quiet_s): coordinator CPU (utime + stime from
//      /proc/PID/stat) over the heartbeats answered in it;
//   3. submits the job (an MLP of about --floats parameters cut into
//      --partition_bytes partitions, SGD with momentum 0, BSP, N workers):
//      time until every worker has its rank;
//      then, with --hold_s, the coordinator CPU per heartbeat that carries
//      the assignment (every heartbeat of a worker with a rank does);
//   4. --steps BSP steps, each worker starting step s at s x
//      --step_interval_ms (0: as fast as they go): per-step latency of every
//      worker (Push + Pull), step rate, pushes and bytes moved;
//   5. with --kill_pid_of=ADDR=PID,...: before step --kill_at_step, SIGKILLs
//      the server that is primary of shard 0: the time until every worker
//      saw the new view, and until every worker finished that step
//      (steps resume), with the coordinator CPU spent meanwhile;
//   6. checks every push was applied exactly once: rank r's gradient of
//      step s, element i is ((r + s + i) mod 7) + 1, exact in float, so the
//      servers' BSP sum is exact; rank 0 replays the servers' float
//      operations (sum, x 1/N, w -= lr x g) from the parameters it pulled
//      before step 0 and compares, bit for bit, with what it pulled after
//      the last step. A push lost, applied twice or applied to the wrong
//      step or partition changes the parameters.
// Every worker then reports its rank done, and the job must SUCCEED. Writes
// one JSON object to --out (also to stdout); exit status 1 when anything
// failed (the job did not succeed, the exactness check) or the run passed
// --deadline_s.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/match.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/member_flags.h"
#include "common/membership.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "common/status.h"
#include "worker/ps_client.h"

ABSL_FLAG(int, workers, 10, "Simulated workers N (1 to 2000).");
ABSL_FLAG(int64_t, floats, 65536, "Model size: about this many float32s.");
ABSL_FLAG(int, steps, 20,
          "BSP steps of the job; 0: none (registration, assignment and "
          "--hold_s only).");
ABSL_FLAG(int, step_interval_ms, 0,
          "Each worker starts step s at s x this after the first; 0: as "
          "fast as the cluster goes.");
ABSL_FLAG(double, quiet_s, 5, "Quiet interval for the heartbeat cost.");
ABSL_FLAG(double, hold_s, 0,
          "Once every worker has its rank, wait this long before the steps: "
          "the heartbeat cost with the assignment in every response.");
ABSL_FLAG(int64_t, partition_bytes, 0,
          "JobConfig.partition_bytes (0: psd's default, 1 MiB).");
ABSL_FLAG(int, coordinator_pid, 0, "The coordinator's pid (CPU, RSS).");
ABSL_FLAG(std::string, kill_pid_of, "",
          "ADDR=PID,...: the servers' pids by advertised address; the "
          "primary of shard 0 is killed before --kill_at_step.");
ABSL_FLAG(int, kill_at_step, 10, "See --kill_pid_of.");
ABSL_FLAG(double, deadline_s, 300, "Give up (exit 1) after this long.");
ABSL_FLAG(std::string, out, "", "The JSON result file (required).");
ABSL_FLAG(bool, name_held_assignment, true,
          "As psd_worker: each heartbeat names the assignment held "
          "(HeartbeatRequest.held_job_id / held_view_epoch), so the "
          "coordinator leaves it out while it is current. false: the whole "
          "assignment comes back in every heartbeat (before issue 19's fix).");

namespace psd {
namespace {

using Clock = std::chrono::steady_clock;
constexpr float kLearningRate = 1.0f / 1024;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// utime + stime of `pid` in seconds, and its RSS in bytes; {-1, -1} when
// unknown.
struct ProcUsage {
  double cpu_s = -1;
  int64_t rss_bytes = -1;
};
ProcUsage ReadUsage(int pid) {
  ProcUsage u;
  if (pid <= 0) return u;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (std::getline(stat, line)) {
    // Fields after the ")" that ends the command name: 3 is state, 14 and
    // 15 are utime and stime (proc(5)); here they are [11] and [12].
    const size_t close = line.rfind(')');
    std::vector<std::string> f =
        absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
    double ut = 0, st = 0;
    if (f.size() > 12 && absl::SimpleAtod(f[11], &ut) &&
        absl::SimpleAtod(f[12], &st)) {
      u.cpu_s = (ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  while (std::getline(status, line)) {
    int64_t kb = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(
                             absl::StripPrefix(line, "VmRSS:"), "kB")),
                         &kb)) {
      u.rss_bytes = kb * 1024;
    }
  }
  return u;
}

// Rank r's gradient of step s, element i (see the file comment).
float Gradient(int r, int64_t s, int64_t i) {
  return static_cast<float>((r + s + i) % 7 + 1);
}

// One simulated worker: a Membership and the thread that runs its rank.
class SimWorker : public ViewSource {
 public:
  struct Shared {
    std::atomic<bool> cancel{false};     // give up (deadline)
    Clock::time_point start;             // step 0's time origin: set
    absl::Notification go;               // before this is notified
    Clock::time_point submitted;
  };

  SimWorker(MembershipOptions options, Shared* shared)
      : shared_(shared) {
    // As psd_worker: registering again (after the coordinator expired it)
    // claims the rank it is training, so it gets it back.
    options.fill_register = [this](RegisterRequest* r) {
      absl::MutexLock lock(&mu_);
      if (!assignment_) return;
      r->set_job_id(assignment_->job_id());
      r->set_rank(assignment_->rank());
    };
    if (absl::GetFlag(FLAGS_name_held_assignment)) {
      options.fill_heartbeat = [this](HeartbeatRequest* r) {
        absl::MutexLock lock(&mu_);
        if (!assignment_) return;
        r->set_held_job_id(assignment_->job_id());
        r->set_held_view_epoch(assignment_->view_epoch());
      };
    }
    membership_ = std::make_unique<Membership>(
        std::move(options),
        [this](const HeartbeatResponse& r) { OnHeartbeat(r); });
  }

  ~SimWorker() override {
    if (thread_.joinable()) thread_.join();
  }

  absl::Status Register() { return membership_->Start(); }
  int64_t heartbeats() const { return heartbeats_.load(); }
  // Serialized size of the last heartbeat response that carried a new view.
  int64_t response_bytes() {
    absl::MutexLock lock(&mu_);
    return response_bytes_;
  }

  // ViewSource.
  int64_t LatestEpoch() override {
    absl::MutexLock lock(&mu_);
    return assignment_ ? assignment_->view_epoch() : 0;
  }
  std::optional<Assignment> AwaitNewer(int64_t epoch,
                                       absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    auto newer = [&] {
      mu_.AssertHeld();
      return assignment_ && assignment_->view_epoch() > epoch;
    };
    mu_.AwaitWithTimeout(absl::Condition(&newer), timeout);
    if (!newer()) return std::nullopt;
    return *assignment_;
  }

  // Seconds after `since` at which this worker first saw a view epoch above
  // `epoch` (-1: not yet).
  double SawEpochAbove(int64_t epoch, Clock::time_point since) {
    absl::MutexLock lock(&mu_);
    for (const auto& [e, t] : seen_epochs_) {
      if (e > epoch) return std::chrono::duration<double>(t - since).count();
    }
    return -1;
  }

  // Waits for the rank, then the steps; `before_step(s)` runs on rank 0's
  // thread before it starts step s (the kill). Results below.
  using BeforeStep = std::function<void(int64_t, const Assignment&)>;
  void Start(BeforeStep before_step) {
    thread_ = std::thread([this, before_step] { status_ = Run(before_step); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  absl::Status status_;
  int rank_ = -1;
  int64_t floats_ = 0;
  int partitions_ = 0;
  int push_calls_ = 0;  // push calls per step: one per shard
  std::vector<double> step_s_;         // Push + Pull of each step
  std::vector<double> step_end_s_;     // end of each step, since start
  std::vector<std::vector<float>> init_, final_;  // rank 0 only
  Assignment first_;

 private:
  void OnHeartbeat(const HeartbeatResponse& r) {
    heartbeats_.fetch_add(1);
    if (!r.has_assignment()) return;
    absl::MutexLock lock(&mu_);
    // The coordinator runs the bench's one job only: any assignment is it.
    if (assignment_ && assignment_->view_epoch() >= r.assignment().view_epoch()) {
      return;
    }
    assignment_ = r.assignment();
    response_bytes_ = static_cast<int64_t>(r.ByteSizeLong());
    seen_epochs_.push_back({r.assignment().view_epoch(), Clock::now()});
  }

  absl::Status Run(const BeforeStep& before_step) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SimWorker* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
            return w->assignment_.has_value() || w->shared_->cancel.load();
          },
          this));
      if (!assignment_) return absl::CancelledError("no assignment");
      first_ = *assignment_;
    }
    rank_ = first_.rank();
    if (absl::GetFlag(FLAGS_steps) == 0) return absl::OkStatus();
    ParameterClientOptions options;
    options.cancel = &shared_->cancel;
    options.views = this;
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<ParameterClient> client,
                         ParameterClient::Create(first_, options));
    partitions_ = first_.placement().partitions_size();
    // One push call per shard per step (the client's call_per_shard).
    std::set<int32_t> shards;
    for (const Partition& p : first_.placement().partitions()) {
      shards.insert(p.shard());
    }
    push_calls_ = static_cast<int>(shards.size());
    std::vector<std::vector<float>> grads, params;
    for (int64_t n : client->parameter_sizes()) {
      floats_ += n;
      grads.emplace_back(n);
    }
    const int64_t start = first_.start_step();
    if (start != 0) return absl::InternalError("the job did not start at 0");
    PSD_RETURN_IF_ERROR(client->Pull(0, false, &params));
    if (rank_ == 0) init_ = params;
    const int steps = absl::GetFlag(FLAGS_steps);
    const int interval = absl::GetFlag(FLAGS_step_interval_ms);
    while (!shared_->go.WaitForNotificationWithTimeout(absl::Seconds(1))) {
      if (shared_->cancel.load()) return absl::CancelledError("deadline");
    }
    for (int64_t s = 0; s < steps; ++s) {
      if (rank_ == 0) before_step(s, first_);
      std::this_thread::sleep_until(shared_->start +
                                    std::chrono::milliseconds(interval * s));
      int64_t offset = 0;  // element index across the whole model
      for (auto& g : grads) {
        for (size_t i = 0; i < g.size(); ++i) {
          g[i] = Gradient(rank_, s, offset + static_cast<int64_t>(i));
        }
        offset += static_cast<int64_t>(g.size());
      }
      const Clock::time_point t0 = Clock::now();
      PSD_RETURN_IF_ERROR(client->Push(s, grads));
      PSD_RETURN_IF_ERROR(client->Pull(s + 1, false, &params));
      step_s_.push_back(Since(t0));
      step_end_s_.push_back(Since(shared_->start));
    }
    if (rank_ == 0) final_ = std::move(params);
    return absl::OkStatus();
  }

 public:
  // Reports the rank done (or failed) to the coordinator.
  void Report() {
    if (rank_ < 0) return;
    ReportProgressRequest report;
    report.set_job_id(first_.job_id());
    report.set_rank(rank_);
    if (status_.ok()) {
      report.set_done(true);
    } else {
      report.set_error(status_.ToString());
    }
    // Retried a while, as psd_worker's last report: the worker may be
    // registering again (expired under load) and get its rank back.
    grpc::Status s;
    for (int attempt = 0; attempt < 20; ++attempt) {
      report.set_member_id(membership_->member_id());
      ReportProgressResponse response;
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(std::chrono::seconds(30)));
      s = membership_->coordinator()->ReportProgress(&context, report,
                                                     &response);
      if (s.ok()) return;
      absl::SleepFor(absl::Milliseconds(500));
    }
    Log()->error("rank {}: ReportProgress: {}", rank_, s.error_message());
  }

 private:
  Shared* const shared_;
  std::atomic<int64_t> heartbeats_{0};
  std::thread thread_;
  absl::Mutex mu_;
  std::optional<Assignment> assignment_ ABSL_GUARDED_BY(mu_);
  int64_t response_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<int64_t, Clock::time_point>> seen_epochs_
      ABSL_GUARDED_BY(mu_);
  // Last: destroyed first, so its heartbeat thread (which calls
  // OnHeartbeat) stops before the members above go.
  std::unique_ptr<Membership> membership_;
};

// The servers' result after `steps` BSP steps from `init` (rank 0's pull
// before step 0), replaying their float operations: the integer sum of the
// N gradients (exact), times 1/N, then w -= lr x g (SGD, momentum 0).
bool ExactlyOnce(const std::vector<std::vector<float>>& init,
                 const std::vector<std::vector<float>>& final, int workers,
                 int steps, int64_t* mismatches) {
  const float scale = 1.0f / static_cast<float>(workers);
  // sum over r of Gradient(r, s, i) depends on (s + i) mod 7 only.
  std::vector<float> mean(7);
  for (int k = 0; k < 7; ++k) {
    float sum = 0;
    for (int r = 0; r < workers; ++r) sum += Gradient(r, k, 0);
    mean[k] = sum * scale;
  }
  *mismatches = 0;
  if (init.size() != final.size()) return false;
  int64_t offset = 0;
  for (size_t t = 0; t < init.size(); ++t) {
    if (init[t].size() != final[t].size()) return false;
    for (size_t i = 0; i < init[t].size(); ++i) {
      float w = init[t][i];
      const int64_t e = offset + static_cast<int64_t>(i);
      for (int s = 0; s < steps; ++s) w -= kLearningRate * mean[(s + e) % 7];
      if (std::memcmp(&w, &final[t][i], sizeof(float)) != 0) ++*mismatches;
    }
    offset += static_cast<int64_t>(init[t].size());
  }
  return *mismatches == 0;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t k = static_cast<size_t>(
      std::max(0.0, std::ceil(q * static_cast<double>(v.size())) - 1));
  return v[std::min(k, v.size() - 1)];
}

std::string Json(const std::map<std::string, double>& numbers,
                 const std::map<std::string, std::string>& strings) {
  std::vector<std::string> items;
  for (const auto& [k, v] : numbers) {
    items.push_back(absl::StrCat("\"", k, "\": ",
                                 std::isfinite(v) ? absl::StrCat(v) : "null"));
  }
  for (const auto& [k, v] : strings) {
    items.push_back(absl::StrCat("\"", k, "\": \"", v, "\""));
  }
  return absl::StrCat("{", absl::StrJoin(items, ", "), "}\n");
}

int Main() {
  const int n = absl::GetFlag(FLAGS_workers);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (n < 1 || n > 2000) {
    return StartupError(absl::InvalidArgumentError("--workers: 1 to 2000"));
  }
  if (out.empty()) return StartupError(absl::InvalidArgumentError("--out is required"));
  absl::StatusOr<MembershipOptions> member =
      MembershipOptionsFromFlags(MembershipOptions::Role::kWorker);
  if (!member.ok()) return StartupError(member.status());
  const int coordinator_pid = absl::GetFlag(FLAGS_coordinator_pid);
  std::map<std::string, double> r;
  std::map<std::string, std::string> notes;
  r["workers"] = n;

  SimWorker::Shared shared;
  // A watchdog: the run is bounded in time whatever happens (it cancels
  // every call in flight; the run then fails).
  absl::Notification finished;
  std::atomic<bool> timed_out{false};
  std::thread watchdog([&] {
    if (finished.WaitForNotificationWithTimeout(
            absl::Seconds(absl::GetFlag(FLAGS_deadline_s)))) {
      return;
    }
    timed_out = true;
    shared.cancel = true;
    Log()->error("--deadline_s passed: giving up");
  });
  auto finish = [&](int code) {
    finished.Notify();
    watchdog.join();
    return timed_out.load() ? 1 : code;
  };

  // 1. Registration. Advertised addresses: workers serve nothing here; a
  // distinct made-up one each, as the coordinator keys nothing on it.
  const ProcUsage before = ReadUsage(coordinator_pid);
  std::vector<std::unique_ptr<SimWorker>> workers;
  const Clock::time_point reg0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    MembershipOptions options = *member;
    options.advertised_address = absl::StrCat("127.0.0.2:", 10000 + i);
    workers.push_back(std::make_unique<SimWorker>(options, &shared));
    absl::Status s = workers.back()->Register();
    if (!s.ok()) {
      Log()->error("worker {}: {}", i, s.ToString());
      return finish(1);
    }
  }
  r["register_s"] = Since(reg0);
  absl::SleepFor(absl::Seconds(1));  // every worker heartbeating
  const ProcUsage registered = ReadUsage(coordinator_pid);
  r["coordinator_rss_before_mib"] = before.rss_bytes / 1048576.0;
  r["coordinator_rss_registered_mib"] = registered.rss_bytes / 1048576.0;
  r["coordinator_rss_per_worker_kib"] =
      (registered.rss_bytes - before.rss_bytes) / 1024.0 / n;

  // 2. Quiet interval: heartbeats only.
  auto total_heartbeats = [&] {
    int64_t h = 0;
    for (auto& w : workers) h += w->heartbeats();
    return h;
  };
  {
    const ProcUsage a = ReadUsage(coordinator_pid);
    const int64_t h0 = total_heartbeats();
    const Clock::time_point t0 = Clock::now();
    absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_quiet_s)));
    const ProcUsage b = ReadUsage(coordinator_pid);
    const double dt = Since(t0);
    const int64_t h = total_heartbeats() - h0;
    r["quiet_s"] = dt;
    r["heartbeats_per_s"] = h / dt;
    r["coordinator_cpu_share_quiet"] = (b.cpu_s - a.cpu_s) / dt;
    r["coordinator_cpu_us_per_heartbeat"] =
        h > 0 ? (b.cpu_s - a.cpu_s) * 1e6 / static_cast<double>(h) : -1;
  }

  // 3. The job.
  JobConfig config;
  const int64_t floats = absl::GetFlag(FLAGS_floats);
  config.set_name("scale");
  config.mutable_model()->set_kind(ModelSpec::MLP);
  config.mutable_model()->set_input_dim(784);
  config.mutable_model()->add_hidden_sizes(
      static_cast<int32_t>(std::max<int64_t>(1, (floats + 397) / 795)));
  config.mutable_model()->set_num_classes(10);
  config.mutable_model()->set_init_seed(1);
  config.mutable_dataset()->set_name("fashion-mnist");
  config.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  config.mutable_optimizer()->set_learning_rate(kLearningRate);
  config.mutable_optimizer()->set_momentum(0);
  config.set_consistency(BSP);
  // Unused (no data is read), but validated: batch x workers <= 60,000.
  config.set_batch_size(std::max(1, std::min(64, 60000 / n)));
  config.set_epochs(1);
  config.set_workers(n);
  config.set_seed(1);
  config.set_partition_bytes(absl::GetFlag(FLAGS_partition_bytes));
  auto jobs = JobService::NewStub(MakeChannel(member->coordinator));
  std::string job_id;
  {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(30)));
    SubmitJobResponse submitted;
    shared.submitted = Clock::now();
    grpc::Status s = jobs->SubmitJob(&context, config, &submitted);
    if (!s.ok()) {
      Log()->error("SubmitJob: {}", s.error_message());
      return finish(1);
    }
    job_id = submitted.job_id();
    notes["job_id"] = submitted.job_id();
  }
  // Rank 0 kills the primary of shard 0 before --kill_at_step.
  std::map<std::string, int> pid_of;
  for (absl::string_view kv : absl::StrSplit(absl::GetFlag(FLAGS_kill_pid_of),
                                             ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, '=');
    int pid = 0;
    if (absl::SimpleAtoi(p.second, &pid)) pid_of[p.first] = pid;
  }
  std::atomic<bool> killed{false};
  Clock::time_point kill_time;
  int64_t kill_epoch = 0;
  auto before_step = [&](int64_t s, const Assignment& a) {
    if (pid_of.empty() || s != absl::GetFlag(FLAGS_kill_at_step)) return;
    std::string primary, address;
    for (const ShardReplicas& sh : a.shards()) {
      if (sh.shard() == 0) primary = sh.primary();
    }
    for (const ServerInfo& sv : a.servers()) {
      if (sv.id() == primary) address = sv.address();
    }
    auto it = pid_of.find(address);
    if (it == pid_of.end()) {
      Log()->error("no pid for the primary of shard 0 at {}", address);
      return;
    }
    kill_time = Clock::now();
    kill_epoch = a.view_epoch();
    ::kill(it->second, SIGKILL);
    killed = true;
    Log()->info("killed server {} (pid {}) before step {}", address,
                it->second, s);
  };
  // Rank 0's worker is only known once assigned; every worker thread gets
  // the hook and only rank 0 calls it.
  for (auto& w : workers) w->Start(before_step);
  // Wait for every worker's first assignment.
  double assigned_max = -1;
  {
    std::vector<double> got;
    while (!shared.cancel.load()) {
      got.clear();
      for (auto& w : workers) {
        const double t = w->SawEpochAbove(-1, shared.submitted);
        if (t >= 0) got.push_back(t);
      }
      if (got.size() == workers.size()) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (shared.cancel.load()) return finish(1);
    assigned_max = *std::max_element(got.begin(), got.end());
    r["job_assign_first_s"] = *std::min_element(got.begin(), got.end());
    r["job_assign_all_s"] = assigned_max;
    // The view reached everyone: from the first worker that had it to the
    // last, i.e. the publication alone, without the servers' setup.
    r["job_view_spread_s"] = assigned_max - r["job_assign_first_s"];
  }
  // Heartbeats that carry the assignment, before any step.
  if (absl::GetFlag(FLAGS_hold_s) > 0) {
    const ProcUsage a = ReadUsage(coordinator_pid);
    const int64_t h0 = total_heartbeats();
    const Clock::time_point t0 = Clock::now();
    absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_hold_s)));
    const ProcUsage b = ReadUsage(coordinator_pid);
    const int64_t h = total_heartbeats() - h0;
    r["coordinator_cpu_us_per_assigned_heartbeat"] =
        h > 0 ? (b.cpu_s - a.cpu_s) * 1e6 / static_cast<double>(h) : -1;
    r["coordinator_cpu_share_assigned"] = (b.cpu_s - a.cpu_s) / Since(t0);
  }
  // The steps start together, a little after now.
  shared.start = Clock::now() + std::chrono::milliseconds(200);
  shared.go.Notify();
  // The coordinator's CPU time, sampled every 20 ms while the steps run
  // (for the failover's view change).
  std::vector<std::pair<double, double>> cpu_samples;  // since start, cpu_s
  std::atomic<bool> steps_done{false};
  std::thread sampler([&] {
    while (!steps_done.load()) {
      cpu_samples.push_back({Since(shared.start),
                             ReadUsage(coordinator_pid).cpu_s});
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  auto cpu_at = [&](double t) {  // the last sample at or before t
    double cpu = cpu_samples.empty() ? 0 : cpu_samples.front().second;
    for (const auto& [when, c] : cpu_samples) {
      if (when <= t) cpu = c;
    }
    return cpu;
  };
  const ProcUsage steps_a = ReadUsage(coordinator_pid);
  const Clock::time_point steps_t0 = shared.start;
  for (auto& w : workers) w->Join();
  const double steps_wall = Since(steps_t0);
  const ProcUsage steps_b = ReadUsage(coordinator_pid);
  steps_done = true;
  sampler.join();
  int code = 0;
  for (auto& w : workers) {
    if (!w->status_.ok()) {
      Log()->error("rank {}: {}", w->rank_, w->status_.ToString());
      code = 1;
    }
  }
  for (auto& w : workers) w->Report();
  if (code != 0) return finish(code);
  // The job must SUCCEED: every rank reported done.
  JobStatus job;
  for (int i = 0; i < 300 && !shared.cancel.load(); ++i) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
    GetJobRequest get;
    get.set_job_id(job_id);
    grpc::Status s = jobs->GetJob(&context, get, &job);
    if (s.ok() && job.state() != RUNNING && job.state() != PENDING) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  notes["job_state"] = JobState_Name(job.state());
  if (job.state() != SUCCEEDED) {
    Log()->error("job {} is {}, not SUCCEEDED", job_id,
                 JobState_Name(job.state()));
    code = 1;
  }

  // 4. Steps.
  const int steps = absl::GetFlag(FLAGS_steps);
  // Every heartbeat of a worker with a rank carries the whole assignment.
  r["heartbeat_response_bytes"] =
      static_cast<double>(workers[0]->response_bytes());
  if (steps == 0) notes["exactly_once"] = "no steps";
  if (steps > 0) {
    std::vector<double> step_s, step_wall(steps, 0);
    SimWorker* rank0 = nullptr;
    for (auto& w : workers) {
      step_s.insert(step_s.end(), w->step_s_.begin(), w->step_s_.end());
      for (int s = 0; s < steps; ++s) {
        step_wall[s] = std::max(step_wall[s], w->step_end_s_[s]);
      }
      if (w->rank_ == 0) rank0 = w.get();
    }
    r["floats"] = static_cast<double>(rank0->floats_);
    r["partitions"] = rank0->partitions_;
    r["push_calls_per_step"] = rank0->push_calls_;
    r["servers"] = rank0->first_.servers_size();
    r["steps"] = steps;
    r["step_interval_ms"] = absl::GetFlag(FLAGS_step_interval_ms);
    r["step_p50_ms"] = 1e3 * Percentile(step_s, 0.5);
    r["step_p99_ms"] = 1e3 * Percentile(step_s, 0.99);
    r["step_max_ms"] = 1e3 * Percentile(step_s, 1.0);
    r["steps_wall_s"] = steps_wall;
    r["steps_per_s"] = steps / step_wall[steps - 1];
    // Every rank pushes every partition once per step and pulls it back.
    const double pushes = static_cast<double>(n) * rank0->partitions_ * steps;
    const double bytes = static_cast<double>(n) * rank0->floats_ * 4 * steps;
    r["pushes_per_s"] = pushes / step_wall[steps - 1];
    r["push_bytes_per_s"] = bytes / step_wall[steps - 1];
    r["coordinator_cpu_share_steps"] =
        (steps_b.cpu_s - steps_a.cpu_s) / steps_wall;

    // 5. Failover.
    if (killed) {
      const int k = absl::GetFlag(FLAGS_kill_at_step);
      std::vector<double> saw;
      for (auto& w : workers) saw.push_back(w->SawEpochAbove(kill_epoch, kill_time));
      const double all_saw = *std::max_element(saw.begin(), saw.end());
      r["failover_view_first_s"] = *std::min_element(saw.begin(), saw.end());
      r["failover_view_all_s"] = all_saw;
      r["failover_view_spread_s"] = all_saw - r["failover_view_first_s"];
      // Steps resume: every worker finished step k.
      const double kill_since_start =
          std::chrono::duration<double>(kill_time - shared.start).count();
      r["failover_resume_s"] = step_wall[k] - kill_since_start;
      // Step k's length without a kill: the median of the other steps.
      std::vector<double> others;
      for (int s = 1; s < steps; ++s) {
        if (s != k) others.push_back(step_wall[s] - step_wall[s - 1]);
      }
      r["failover_normal_step_s"] = Percentile(others, 0.5);
      // Coordinator CPU from the kill until every worker had the new view,
      // less what heartbeats cost over that time: the view change's own.
      const double t_kill = kill_since_start;
      const double spent = cpu_at(t_kill + all_saw + 0.02) - cpu_at(t_kill);
      r["failover_coordinator_cpu_ms"] = 1e3 * spent;
      r["failover_coordinator_cpu_ms_net"] =
          1e3 * (spent - r["coordinator_cpu_share_quiet"] * (all_saw + 0.02));
    }

    // 6. Exactly once.
    int64_t mismatches = 0;
    const bool exact =
        ExactlyOnce(rank0->init_, rank0->final_, n, steps, &mismatches);
    r["exact_mismatches"] = static_cast<double>(mismatches);
    notes["exactly_once"] = exact ? "yes" : "no";
    if (!exact) {
      Log()->error("parameters after {} steps differ from the replay in {} "
                   "elements: a push was lost, repeated or misapplied",
                   steps, mismatches);
      code = 1;
    }
  }
  const std::string json = Json(r, notes);
  std::ofstream f(out);
  f << json;
  if (!f) {
    Log()->error("cannot write {}", out);
    code = 1;
  }
  std::fputs(json.c_str(), stdout);
  return finish(code);
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"scale_bench", "bench",
       "N simulated workers against a real coordinator and servers.\n"
       "  scale_bench --insecure --coordinator=HOST:PORT --workers=N "
       "--out=FILE [--coordinator_pid=PID] [--kill_pid_of=ADDR=PID,...]"},
      psd::Main);
}
