// psd_server: a parameter server. Holds parameter partitions of jobs, serves
// push and pull, and applies the optimizer (see server/ps/parameter_store.h).
#include <algorithm>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/data_dir.h"
#include "common/member_flags.h"
#include "common/membership.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/process_main.h"
#include "common/quote.h"
#include "common/rpc.h"
#include "server/embedding/embedding_service.h"
#include "server/embedding/embedding_snapshot.h"
#include "server/embedding/embedding_store.h"
#include "server/ps/parameter_service.h"
#include "server/ps/replicator.h"
#include "server/ps/parameter_store.h"
#include "server/snapshot/snapshot_store.h"
#include "server/snapshot/snapshot_writer.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "Address to serve gRPC on; port 0 lets the OS choose.");
ABSL_FLAG(std::string, advertise, "",
          "Address others dial to reach this server (default: the listen "
          "host with the bound port).");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound port to this file once serving.");
ABSL_FLAG(std::string, data_dir, "",
          "This server's own data directory, locked while it runs (a second "
          "process given the same one exits with an error). Snapshots are "
          "written here (RocksDB, <data_dir>/snapshots; sparse embedding "
          "tables' in <data_dir>/embeddings), and found again "
          "after a restart; empty = no snapshots.");
ABSL_FLAG(std::string, on_corrupt_data_dir, "fail",
          "What to do when a store in --data_dir (snapshots, embeddings) is "
          "damaged (DATA_LOSS, e.g. a bad MANIFEST): \"fail\" exits with the "
          "error; \"quarantine\" moves the damaged store aside to "
          "<data_dir>/<store>.corrupt-<UTC time> (nothing is deleted) and "
          "starts with an empty one, so the server rejoins as a new member "
          "and gets its shards back from their other replicas "
          "(docs/OPERATIONS.md, \"A damaged data directory\").");
ABSL_FLAG(int64_t, max_job_bytes, int64_t{16} << 30,
          "The most memory one job's parameter state may take on this "
          "server, bytes; a job needing more is refused with "
          "RESOURCE_EXHAUSTED before anything is allocated.");
ABSL_FLAG(int64_t, replica_check_every_steps, 100,
          "The replica check: as a primary, send the checksums of the "
          "partitions' state (weights, optimizer slots) to the backups with "
          "the replication of every update whose step is a multiple of "
          "this, and at the job's snapshot steps; a backup whose own differ "
          "is taken out of the view and re-synced by state transfer. 0: only "
          "at snapshot steps.");
ABSL_FLAG(int64_t, test_corrupt_backup_at_step, -1,
          "FOR TESTS ONLY, never in production: when this server, as a "
          "shard's backup, applies the replicated update that brings a "
          "partition to this step, it changes that partition's weights "
          "behind its primary's back (what the replica check must catch). "
          "-1 (default): off.");
ABSL_FLAG(int64_t, test_slow_create_job_ms, 0,
          "FOR TESTS ONLY, never in production: every CreateJob waits this "
          "long, ms, before it does anything (a server that answers the "
          "coordinator's job set-up late while its heartbeats stay on "
          "time). 0 (default): off.");
ABSL_FLAG(int64_t, backup_stall_ms, 10000,
          "A backup that has not applied a step for this long (while the "
          "coordinator still sees it alive) is reported to the coordinator, "
          "which takes it out of the view so the step completes without it; "
          "a state transfer brings it back later, ms; 0 = never.");
ABSL_FLAG(bool, shared_memory, true,
          "Let workers on this host carry push and pull tensor bytes through "
          "their shared memory (/dev/shm) instead of gRPC messages "
          "(AttachSharedMemory); false: they send them in the messages.");
ABSL_FLAG(int64_t, shared_memory_max_bytes, int64_t{4} << 30,
          "The largest worker shared-memory region this server maps, "
          "bytes; a worker with a larger one sends bytes in the messages.");
ABSL_FLAG(int64_t, embedding_max_bytes, 0,
          "The memory this server states for sparse embedding tables, bytes: "
          "a push (or restore) that needs more row storage than this over "
          "all tables is refused with RESOURCE_EXHAUSTED and applies "
          "nothing (EmbeddingStoreOptions.max_bytes). 0 (default): "
          "unbounded.");
ABSL_FLAG(int64_t, test_stall_replicate_at_step, -1,
          "FOR TESTS ONLY, never in production: this server, as a backup, "
          "stalls while its heartbeats go on: from the first replication of "
          "this step it is sent, it holds every replication of this step "
          "unanswered for --test_stall_replicate_ms (what --backup_stall_ms "
          "must catch). -1 (default): off.");
ABSL_FLAG(int64_t, test_stall_replicate_ms, 0,
          "FOR TESTS ONLY: how long --test_stall_replicate_at_step holds, "
          "ms; 0 (default): as long as the server runs.");

namespace psd {
namespace {

// Opens a store of the data directory at `dir` with `open`. When it is
// damaged (DATA_LOSS) and `quarantine` is set, moves it aside (MoveAside)
// with a loud log line and opens an empty one in its place.
template <typename Open>
auto OpenStore(const std::string& dir, bool quarantine, Open open)
    -> decltype(open()) {
  auto opened = open();
  if (opened.ok() || opened.status().code() != absl::StatusCode::kDataLoss) {
    return opened;
  }
  if (!quarantine) {
    return absl::DataLossError(absl::StrCat(
        opened.status().message(),
        " (--on_corrupt_data_dir=quarantine moves the damaged store aside "
        "and starts empty, to get the data back from other replicas)"));
  }
  Log()->error("--data_dir: {}", opened.status().ToString());
  auto moved = MoveAside(dir, absl::Now());
  if (!moved.ok()) return moved.status();
  Log()->error(
      "--on_corrupt_data_dir=quarantine: the damaged store {} was MOVED TO {} "
      "and an empty one is created: this server starts with no data of its "
      "own and a new uid; its shards come back from their other replicas "
      "(jobs whose only replica was here cannot resume). Delete {} once it "
      "is no longer needed",
      dir, *moved, *moved);
  return open();
}

int Main() {
  absl::StatusOr<MembershipOptions> member =
      MembershipOptionsFromFlags(MembershipOptions::Role::kServer);
  if (!member.ok()) {
    Log()->error("{}", std::string(member.status().message()));
    return 2;
  }
  MetricsRegistry metrics;
  AddProcessMetrics(&metrics);
  const std::string on_corrupt = absl::GetFlag(FLAGS_on_corrupt_data_dir);
  if (on_corrupt != "fail" && on_corrupt != "quarantine") {
    Log()->error("--on_corrupt_data_dir={}: must be fail or quarantine",
                 Quote(on_corrupt));
    return 2;
  }
  const bool quarantine = on_corrupt == "quarantine";
  std::unique_ptr<DataDirLock> data_dir;
  if (!absl::GetFlag(FLAGS_data_dir).empty()) {
    auto lock = DataDirLock::Acquire(absl::GetFlag(FLAGS_data_dir));
    if (!lock.ok()) {
      Log()->error("--data_dir: {}", lock.status().ToString());
      return 1;
    }
    data_dir = *std::move(lock);
  }
  // Snapshots: a RocksDB in <data_dir>/snapshots, written by a background
  // writer (see SnapshotPolicy in proto/job.proto).
  std::unique_ptr<SnapshotStore> snapshots;
  std::unique_ptr<SnapshotWriter> writer;
  std::string server_uid;
  if (data_dir != nullptr) {
    // The store and its uid (a malformed uid is damage too).
    using Opened =
        absl::StatusOr<std::pair<std::unique_ptr<SnapshotStore>, std::string>>;
    const std::string dir = data_dir->path() + "/snapshots";
    Opened opened = OpenStore(dir, quarantine, [&dir]() -> Opened {
      auto store = SnapshotStore::Open(dir, SnapshotStoreOptions());
      if (!store.ok()) return store.status();
      auto uid = (*store)->ServerUid();
      if (!uid.ok()) return uid.status();
      return std::make_pair(*std::move(store), *uid);
    });
    if (!opened.ok()) {
      Log()->error("--data_dir: {}", opened.status().ToString());
      return 1;
    }
    snapshots = std::move(opened->first);
    server_uid = opened->second;
    writer = std::make_unique<SnapshotWriter>(snapshots.get(), /*max_queued=*/2,
                                              &metrics);
    Log()->info("data directory {} (server uid {})", data_dir->path(), server_uid);
  }
  ParameterStoreOptions store_options;
  store_options.max_job_bytes = absl::GetFlag(FLAGS_max_job_bytes);
  store_options.backup_stall_ms = absl::GetFlag(FLAGS_backup_stall_ms);
  store_options.replica_check_every_steps =
      absl::GetFlag(FLAGS_replica_check_every_steps);
  if (store_options.replica_check_every_steps < 0) {
    Log()->error("--replica_check_every_steps: must be >= 0, got {}",
                 store_options.replica_check_every_steps);
    return 2;
  }
  if (absl::GetFlag(FLAGS_test_corrupt_backup_at_step) >= 0) {
    store_options.test_corrupt_backup_at_step =
        absl::GetFlag(FLAGS_test_corrupt_backup_at_step);
    Log()->warn("--test_corrupt_backup_at_step={}: a test hook that corrupts "
                "this server's backup replicas; never use it in production",
                absl::GetFlag(FLAGS_test_corrupt_backup_at_step));
  }
  if (absl::GetFlag(FLAGS_test_stall_replicate_at_step) >= 0) {
    store_options.test_stall_replicate_at_step =
        absl::GetFlag(FLAGS_test_stall_replicate_at_step);
    store_options.test_stall_replicate_ms =
        absl::GetFlag(FLAGS_test_stall_replicate_ms);
    if (store_options.test_stall_replicate_ms < 0) {
      Log()->error("--test_stall_replicate_ms: must be >= 0, got {}",
                   store_options.test_stall_replicate_ms);
      return 2;
    }
    Log()->warn("--test_stall_replicate_at_step={}: a test hook that stalls "
                "this server's backup replicas; never use it in production",
                absl::GetFlag(FLAGS_test_stall_replicate_at_step));
  }
  if (absl::GetFlag(FLAGS_test_slow_create_job_ms) > 0) {
    store_options.test_slow_create_job_ms =
        absl::GetFlag(FLAGS_test_slow_create_job_ms);
    Log()->warn("--test_slow_create_job_ms={}: a test hook that makes every "
                "CreateJob answer late; never use it in production",
                absl::GetFlag(FLAGS_test_slow_create_job_ms));
  }
  if (writer != nullptr) {
    store_options.snapshot_sink = [w = writer.get()](ShardSnapshot snapshot) {
      w->Enqueue(std::move(snapshot));
    };
  }
  // Replication calls to backups go through the replicator, whose outcomes
  // settle the store's steps.
  std::unique_ptr<Replicator> replicator;
  store_options.replicate = [&replicator](ReplicationTask task) {
    replicator->Send(std::move(task));
  };
  ParameterStore store(store_options);
  replicator = std::make_unique<Replicator>(
      ReplicatorOptions(),
      [&store](const ReplicationTask& task, const absl::Status& status) {
        return store.OnReplicated(task, status);
      },
      &metrics);
  // The replicator stops (its calls in flight cancelled, none settled
  // after) before the store it settles into goes away.
  absl::Cleanup stop_replicator = [&replicator] { replicator->Stop(); };
  SharedRegions::Options shared_memory;
  shared_memory.enabled = absl::GetFlag(FLAGS_shared_memory);
  shared_memory.max_region_bytes = static_cast<uint64_t>(
      std::max<int64_t>(absl::GetFlag(FLAGS_shared_memory_max_bytes), 0));
  ParameterService service(&store, &metrics, snapshots.get(), shared_memory);
  // Per job: the ranks' clocks and the staleness seen (GetServerStatus has
  // them per rank).
  using JobValue = double (*)(const ServerJobStatus&);
  const auto per_job = [&store](JobValue value) {
    return [&store, value]() {
      LabeledValues values;
      const ServerStatus status = store.Status();
      for (const ServerJobStatus& job : status.jobs()) {
        if (job.worker_clocks_size() > 0) {
          values.emplace_back(job.job_id(), value(job));
        }
      }
      return values;
    };
  };
  metrics.AddGaugeFamilyCallback(
      "psd_server_max_staleness_steps",
      "The largest staleness seen at pull time on this server (the pulling "
      "rank's clock minus the slowest rank's; ASP/SSP), steps.",
      "job", per_job([](const ServerJobStatus& j) {
        return static_cast<double>(j.max_staleness());
      }));
  metrics.AddGaugeFamilyCallback(
      "psd_server_min_worker_clock",
      "The slowest rank's clock: steps it pushed that this server applied.",
      "job", per_job([](const ServerJobStatus& j) {
        return static_cast<double>(*std::min_element(j.worker_clocks().begin(),
                                                     j.worker_clocks().end()));
      }));
  metrics.AddGaugeFamilyCallback(
      "psd_server_max_worker_clock",
      "The fastest rank's clock: steps it pushed that this server applied.",
      "job", per_job([](const ServerJobStatus& j) {
        return static_cast<double>(*std::max_element(j.worker_clocks().begin(),
                                                     j.worker_clocks().end()));
      }));
  // The replica check, on this server as a backup.
  metrics.AddCounterCallback(
      "psd_server_replica_checks_total",
      "Replica checks made by this server as a backup: partitions whose "
      "state checksum it compared with its primary's.",
      [&store] { return static_cast<double>(store.ReplicaChecks().checks); });
  metrics.AddCounterCallback(
      "psd_server_replica_mismatches_total",
      "Replica checks that found a partition of this server, as a backup, "
      "different from its primary's (each is then re-synced by state "
      "transfer).",
      [&store] {
        return static_cast<double>(store.ReplicaChecks().mismatches);
      });
  // Sparse embedding tables (psd.v1.EmbeddingServer, ASP), on the same port.
  // Their snapshots: a RocksDB of their own in <data_dir>/embeddings
  // (server/embedding/embedding_snapshot.h); none without --data_dir.
  std::unique_ptr<EmbeddingSnapshotStore> embedding_snapshots;
  if (data_dir != nullptr) {
    const std::string dir = data_dir->path() + "/embeddings";
    auto opened = OpenStore(dir, quarantine,
                            [&dir] { return EmbeddingSnapshotStore::Open(dir); });
    if (!opened.ok()) {
      Log()->error("--data_dir: {}", opened.status().ToString());
      return 1;
    }
    embedding_snapshots = *std::move(opened);
  }
  const int64_t embedding_max_bytes = absl::GetFlag(FLAGS_embedding_max_bytes);
  if (embedding_max_bytes < 0) {
    Log()->error("--embedding_max_bytes: must be >= 0 (0 = unbounded), got {}",
                 embedding_max_bytes);
    return 1;
  }
  EmbeddingStoreOptions embedding_options;
  embedding_options.max_bytes = embedding_max_bytes;
  EmbeddingStore embedding_store(embedding_options);
  EmbeddingServiceOptions embedding_service_options;
  // ExportRows by users: only of jobs they submitted (as Pull).
  embedding_service_options.submitted_by = [&store](const std::string& job) {
    return store.SubmittedBy(job);
  };
  EmbeddingService embedding_service(&embedding_store, &metrics,
                                     embedding_service_options,
                                     embedding_snapshots.get());
  auto metrics_server = ServeMetrics(&metrics);
  if (!metrics_server.ok()) return StartupError(metrics_server.status());
  RpcServerOptions rpc_options;
  rpc_options.listen_address = absl::GetFlag(FLAGS_listen);
  auto rpc = StartRpcServer(rpc_options, {&service, &embedding_service});
  if (!rpc.ok()) {
    Log()->error("{}", rpc.status().ToString());
    return 1;
  }
  std::string advertised = absl::GetFlag(FLAGS_advertise);
  if (advertised.empty()) {
    advertised = AdvertisedAddress(rpc_options.listen_address, rpc->port);
  }
  Log()->info("serving psd.v1.ParameterServer on {}", advertised);

  MembershipOptions options = *std::move(member);
  options.advertised_address = advertised;
  bool registered_before = false;  // only touched by Membership's thread
  options.fill_register = [&store, &server_uid,
                           &registered_before,
                           embedding_max_bytes](RegisterRequest* request) {
    // Registering again means the coordinator forgot us: our roles may
    // have moved to other servers (fencing), until it sends a view.
    if (registered_before) {
      store.FenceAll();
      Log()->warn("registering again: every shard held waits for a new view");
    }
    registered_before = true;
    request->set_server_uid(server_uid);
    // The coordinator checks sparse jobs' tables against it (issue 25).
    request->set_table_memory_bytes(embedding_max_bytes);
    for (const std::string& job : store.JobIds()) request->add_live_jobs(job);
  };
  options.fill_heartbeat = [w = writer.get(), &store](HeartbeatRequest* request) {
    for (BackupFailure& f : store.TakeBackupFailures()) {
      *request->add_backup_failures() = std::move(f);
    }
    // The clocks of the jobs this server leads a shard of.
    const ServerStatus status = store.Status();
    for (const ServerJobStatus& job : status.jobs()) {
      const bool primary =
          std::any_of(job.shards().begin(), job.shards().end(),
                      [](const ShardStatus& s) { return s.role() == "PRIMARY"; });
      if (job.finished() || !primary || job.worker_clocks().empty()) continue;
      JobClocks* clocks = request->add_job_clocks();
      clocks->set_job_id(job.job_id());
      *clocks->mutable_worker_clocks() = job.worker_clocks();
      clocks->set_max_staleness(job.max_staleness());
      *clocks->mutable_staleness_counts() = job.staleness_counts();
      clocks->set_replicas_verified_step(job.replicas_verified_step());
    }
    if (w == nullptr) return;
    for (SnapshotFailure& f : w->TakeFailures()) {
      *request->add_snapshot_failures() = std::move(f);
    }
  };
  Membership membership(options, [](const HeartbeatResponse&) {});
  absl::Status joined = membership.Start();
  if (!joined.ok()) {
    Log()->error("{}", joined.ToString());
    rpc->server->Shutdown();
    return 1;
  }
  return ServeUntilShutdownSignal(&*rpc, absl::GetFlag(FLAGS_port_file),
                                  std::chrono::seconds(5));
}

}  // namespace
}  // namespace psd

int main(int argc, char** argv) {
  return psd::RunProcess(
      argc, argv,
      {"psd_server", "server",
       "A psd parameter server.\n"
       "  psd_server --coordinator=HOST:PORT [--listen=127.0.0.1:0]\n"
       "             [--metrics_listen=HOST:PORT]\n"
       "Registers with the coordinator, then holds the parameter shards it is\n"
       "given and serves psd.v1.ParameterServer (push, pull) plus gRPC health\n"
       "and reflection, and Prometheus metrics with --metrics_listen.\n"
       "SIGINT/SIGTERM shut it down gracefully."},
      psd::Main);
}
