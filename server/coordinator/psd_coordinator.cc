// psd_coordinator: accepts jobs, tracks servers and workers, assigns ranks
// and parameter shards, and publishes the cluster view.
#include <map>
#include <string>

#include "absl/flags/flag.h"
#include "common/metrics.h"
#include "common/data_dir.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/rpc.h"
#include "server/coordinator/coordinator_db.h"
#include "server/coordinator/coordinator_service.h"
#include "server/coordinator/coordinator_state.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "Address to serve gRPC on; port 0 lets the OS choose.");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound port to this file once serving.");
ABSL_FLAG(int, heartbeat_timeout_ms, 1500,
          "Remove a server or worker that sent no heartbeat for this long, ms: "
          "a primary's backup is promoted, a worker's rank goes to another.");
ABSL_FLAG(int, max_jobs, 1000,
          "Jobs held, in every state, until DeleteJob forgets them; "
          "SubmitJob past it gets RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, recovery_timeout_ms, 300000,
          "After a restart, how long a RECOVERING job waits for the servers "
          "that held its shards (known by their data directories) to "
          "register again, ms. Past it the job resumes without the missing "
          "ones if every shard still has a replica back (they are rebuilt "
          "by state transfer), and FAILS naming each shard that has none "
          "otherwise. It resumes sooner once as many servers are registered "
          "as the job had (a lost disk comes back with a new identity).");
ABSL_FLAG(int, pause_threshold_ms, 200,
          "When the coordinator itself is stalled longer than this (a busy "
          "or paused host), the stall is not counted against members' "
          "heartbeats, ms (docs/OPERATIONS.md, \"Failure detection\").");
ABSL_FLAG(int, max_api_threads, 64,
          "Threads serving the job API (psd.v1.JobService) and reflection; "
          "calls past them get RESOURCE_EXHAUSTED. Membership calls "
          "(registration, heartbeats) never wait for these threads.");
ABSL_FLAG(int, server_call_timeout_ms, 10000,
          "Deadline of one control call to a parameter server (CreateJob, "
          "DropJob, RestoreJob, ...), ms.");
ABSL_FLAG(int, control_call_budget_ms, 20000,
          "Starting or recovering a job, CreateJob and SetView calls that "
          "fail UNAVAILABLE or DEADLINE_EXCEEDED are retried with backoff "
          "for up to this long, ms; then a start attempt has failed (see "
          "--job_start_attempts) and a recovery fails the job.");
ABSL_FLAG(int, job_start_attempts, 5,
          "Attempts to start a job: after a failed one (a server's CreateJob "
          "or SetView failed past --control_call_budget_ms) the job is "
          "PENDING again, its pending_reason naming the server and the "
          "error, and is tried again; past this many it FAILS with every "
          "attempt's error.");
ABSL_FLAG(int, start_failure_cooldown_ms, 60000,
          "A server that failed a job start is left out of new jobs' "
          "placements for this long, ms, while at least "
          "--replication_factor other servers are registered.");
ABSL_FLAG(int, job_start_backoff_ms, 1000,
          "When a failed job start has fewer than --replication_factor other "
          "servers to go to, the job waits this long (doubling with every "
          "failed attempt, up to 30 s) before it is tried again on every "
          "server, ms.");
ABSL_FLAG(int, progress_floor_ms, 60000,
          "Progress watch: a rank alive but behind the fastest rank with no "
          "progress for max(this, --progress_step_factor x the job's mean "
          "step time) is replaced like a dead one, ms; 0 = off.");
ABSL_FLAG(int, progress_step_factor, 50,
          "Progress watch: the bound in mean step times (see "
          "--progress_floor_ms).");
ABSL_FLAG(int, replication_factor, 1,
          "Replicas of every parameter shard (a primary and R-1 backups, on "
          "distinct servers); a job starts once R servers are registered.");
ABSL_FLAG(std::string, data_dir, "",
          "The coordinator's own data directory, locked while it runs (a "
          "second process given the same one exits with an error). Jobs "
          "persist here (RocksDB, <data_dir>/jobs), and a restarted "
          "coordinator resumes them; empty = in memory only.");

namespace psd {
namespace {

// The coordinator's metrics, read from `state` at scrape time.
void AddCoordinatorMetrics(CoordinatorState* state, MetricsRegistry* metrics) {
  metrics->AddGaugeFamilyCallback(
      "psd_coordinator_jobs", "Jobs known to the coordinator, by state.",
      "state", [state] {
        std::map<JobState, double> counts;
        for (int s = JobState_MIN; s <= JobState_MAX; ++s) {
          if (JobState_IsValid(s) && s != JOB_STATE_UNSPECIFIED) {
            counts[static_cast<JobState>(s)] = 0;
          }
        }
        for (const JobStatus& job : state->ListJobs()) counts[job.state()] += 1;
        LabeledValues values;
        for (const auto& [s, n] : counts) {
          values.emplace_back(JobState_Name(s), n);
        }
        return values;
      });
  metrics->AddGaugeCallback(
      "psd_coordinator_pending_jobs",
      "Jobs queued and not started yet (queue depth).", [state] {
        double n = 0;
        for (const JobStatus& job : state->ListJobs()) {
          if (job.state() == PENDING) ++n;
        }
        return n;
      });
  metrics->AddGaugeCallback(
      "psd_coordinator_registered_servers",
      "Parameter servers in the cluster view.",
      [state] { return double(state->GetClusterView().servers_size()); });
  metrics->AddGaugeCallback(
      "psd_coordinator_registered_workers", "Workers in the cluster view.",
      [state] { return double(state->GetClusterView().workers_size()); });
  // Membership of the running jobs (issue 16), one sample per job.
  auto per_running_job = [state](double (*of)(const JobStatus&)) {
    return [state, of] {
      LabeledValues values;
      for (const JobStatus& job : state->ListJobs()) {
        if (job.state() == RUNNING) values.emplace_back(job.job_id(), of(job));
      }
      return values;
    };
  };
  metrics->AddGaugeFamilyCallback(
      "psd_coordinator_job_workers",
      "Workers holding ranks of each running job.", "job",
      per_running_job(
          [](const JobStatus& j) { return double(j.workers_size()); }));
  metrics->AddGaugeFamilyCallback(
      "psd_coordinator_job_membership_epoch",
      "Membership epoch of each running job (grows with every change of "
      "which worker holds which rank).",
      "job", per_running_job([](const JobStatus& j) {
        return double(j.membership_epoch());
      }));
  metrics->AddGaugeFamilyCallback(
      "psd_coordinator_job_paused",
      "1 while a running elastic job has fewer than min_workers workers "
      "and waits for more, else 0.",
      "job", per_running_job([](const JobStatus& j) {
        return j.paused_reason().empty() ? 0.0 : 1.0;
      }));
  metrics->AddGaugeCallback(
      "psd_coordinator_view_epoch",
      "Epoch of the cluster view (grows with every membership change).",
      [state] { return double(state->GetClusterView().epoch()); });
}

int Main() {
  std::unique_ptr<DataDirLock> data_dir;
  if (!absl::GetFlag(FLAGS_data_dir).empty()) {
    auto lock = DataDirLock::Acquire(absl::GetFlag(FLAGS_data_dir));
    if (!lock.ok()) {
      Log()->error("--data_dir: {}", lock.status().ToString());
      return 1;
    }
    data_dir = *std::move(lock);
  }
  std::unique_ptr<CoordinatorDb> db;
  if (data_dir != nullptr) {
    auto opened = CoordinatorDb::Open(data_dir->path() + "/jobs");
    if (!opened.ok()) {
      Log()->error("--data_dir: {}", opened.status().ToString());
      return 1;
    }
    db = *std::move(opened);
  }
  CoordinatorOptions options;
  options.heartbeat_timeout_ms = absl::GetFlag(FLAGS_heartbeat_timeout_ms);
  options.recovery_timeout_ms = absl::GetFlag(FLAGS_recovery_timeout_ms);
  options.max_jobs = absl::GetFlag(FLAGS_max_jobs);
  if (options.max_jobs < 1) {
    Log()->error("--max_jobs={}: must be at least 1", options.max_jobs);
    return 2;
  }
  if (options.recovery_timeout_ms < 0) {
    Log()->error("--recovery_timeout_ms={}: must be >= 0",
                 options.recovery_timeout_ms);
    return 2;
  }
  options.pause_threshold_ms = absl::GetFlag(FLAGS_pause_threshold_ms);
  options.progress_floor_ms = absl::GetFlag(FLAGS_progress_floor_ms);
  options.progress_step_factor = absl::GetFlag(FLAGS_progress_step_factor);
  options.server_call_timeout_ms = absl::GetFlag(FLAGS_server_call_timeout_ms);
  options.control_call_budget_ms = absl::GetFlag(FLAGS_control_call_budget_ms);
  options.job_start_attempts = absl::GetFlag(FLAGS_job_start_attempts);
  options.start_failure_cooldown_ms =
      absl::GetFlag(FLAGS_start_failure_cooldown_ms);
  options.job_start_backoff_ms = absl::GetFlag(FLAGS_job_start_backoff_ms);
  if (options.job_start_attempts < 1) {
    Log()->error("--job_start_attempts={}: must be at least 1",
                 options.job_start_attempts);
    return 2;
  }
  options.replication_factor = absl::GetFlag(FLAGS_replication_factor);
  if (options.replication_factor < 1 || options.replication_factor > 16) {
    Log()->error("--replication_factor={}: must be in [1, 16]",
                 options.replication_factor);
    return 2;
  }
  options.db = db.get();
  MetricsRegistry metrics;
  AddProcessMetrics(&metrics);
  CoordinatorState state(options);
  AddCoordinatorMetrics(&state, &metrics);
  auto metrics_server = ServeMetrics(&metrics);
  if (!metrics_server.ok()) return StartupError(metrics_server.status());
  MembershipService membership(&state);
  JobControlService jobs(&state);
  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  rpc_options.max_threads = absl::GetFlag(FLAGS_max_api_threads);
  auto rpc = StartRpcServer(rpc_options, {&membership, &jobs});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  absl::Status started = state.Start();
  if (!started.ok()) {
    Log()->error("--data_dir: {}", started.ToString());
    rpc->server->Shutdown();
    return 1;
  }
  Log()->info("serving psd.v1.Coordinator and psd.v1.JobService on {}",
              AdvertisedAddress(rpc_options.listen_address, rpc->port));
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(5));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"psd_coordinator", "coordinator",
       "The psd coordinator.\n"
       "  psd_coordinator [--listen=127.0.0.1:0] [--port_file=FILE]\n"
       "Serves psd.v1.Coordinator (membership, cluster view) and\n"
       "psd.v1.JobService (submit, get, list, watch, cancel, delete and\n"
       "snapshot jobs) plus gRPC health and reflection, and Prometheus\n"
       "metrics with --metrics_listen. With --data_dir, jobs survive a\n"
       "restart.\n"
       "SIGINT/SIGTERM shut it down gracefully."},
      psd::Main);
}
