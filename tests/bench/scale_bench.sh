#!/usr/bin/env bash
# Scale benchmark (issue 19): N simulated workers in one process
# (tests/bench/scale_bench.cc) against a real psd_coordinator and S real
# psd_servers, all on 127.0.0.1, in plaintext (--insecure: the bench submits
# its job itself, as the simulated workers' process, and under mutual TLS a
# worker's certificate may not submit jobs). One fresh cluster per (N, S)
# point; each run is bounded in time
# (--deadline). For each point it records, besides the client's own
# measurements (see scale_bench.cc): the servers' push and pull counters
# (psd_server_push_requests_total, ..._bytes_total, from their /metrics)
# over the run, and whether the job SUCCEEDED and every push was applied
# exactly once (the bit-exact replay of the parameters).
#
# Usage: tests/bench/scale_bench.sh [--workers LIST] [--servers LIST]
#            [--floats N] [--steps K] [--interval MS] [--replication R]
#            [--kill] [--quiet S] [--deadline S] [--out FILE]
#   --workers LIST  simulated worker counts, comma-separated (default
#                   10,50,100,200,500)
#   --servers LIST  server counts S (default 1,4)
#   --floats N      model size in float32s (default 65536: 256 KiB)
#   --steps K       BSP steps (default 30)
#   --interval MS   step s starts at s x MS (fixed step rate); 0: as fast as
#                   the cluster goes (default 200)
#   --replication R shard replicas (default 1; --kill sets 2 if 1)
#   --kill          SIGKILL the primary of shard 0 before step K/2 (failover
#                   time); needs S >= 2
#   --quiet S       quiet interval for the heartbeat cost (default 5)
#   --heartbeat_timeout_ms MS  the coordinator's (default 1500, psd's): a
#                   larger one keeps simulated workers that this host's CPUs
#                   starve from being expired (see docs/SCALING.md)
#   --deadline S    per-run bound (default 300)
#   --out FILE      append one JSON line per point (default: in the work dir)
#   --client ARGS   more flags for scale_bench_client (e.g. "--hold_s=5
#                   --partition_bytes=4096"; see scale_bench.cc)
# Prints one table row per point. From the repository root, after
#   bazel build //server/... //tests/bench:scale_bench_client
# or bazel run //tests/bench:scale_bench -- [...]
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
WORKERS=10,50,100,200,500
SERVERS=1,4
FLOATS=65536
STEPS=30
INTERVAL=200
REPL=1
KILL=0
QUIET=5
DEADLINE=300
HB_TIMEOUT=1500
RESULTS=""
CLIENT_ARGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --floats) FLOATS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --replication) REPL="$2"; shift 2 ;;
    --kill) KILL=1; shift ;;
    --quiet) QUIET="$2"; shift 2 ;;
    --heartbeat_timeout_ms) HB_TIMEOUT="$2"; shift 2 ;;
    --deadline) DEADLINE="$2"; shift 2 ;;
    --out) RESULTS="$2"; shift 2 ;;
    --client) CLIENT_ARGS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scale_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$KILL" = 1 ] && [ "$REPL" -lt 2 ] && REPL=2
if [ -d "${RUNFILES_DIR:-$0.runfiles}/psd" ]; then
  cd "${RUNFILES_DIR:-$0.runfiles}/psd"
  SRC=.
else
  cd "$(dirname "$0")/../.."
  SRC=bazel-bin
fi
source deploy/processes.sh
WORK=$(mktemp -d "${TEST_TMPDIR:-${TMPDIR:-/tmp}}/psd-scalebench.XXXXXX")
RESULTS=${RESULTS:-$WORK/results.jsonl}
BIN=$WORK/bin  # private copies: a build running meanwhile cannot swap them
for b in server/coordinator/psd_coordinator server/ps/psd_server \
  tests/bench/scale_bench_client; do
  mkdir -p "$BIN/$(dirname $b)" && cp "$SRC/$b" "$BIN/$b"
done
CERTS=""  # plaintext (see above); tls_flags gives --insecure
PIDS=()
on_exit() {
  local code=$?
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  rm -rf "$BIN"
  if [ $code -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
    done >&2
  fi
  exit $code
}
trap on_exit EXIT

# server_cpu PIDS...: their utime + stime summed, seconds (the live ones).
server_cpu() {
  local p t=0
  for p in "$@"; do
    [ -r /proc/$p/stat ] || continue
    t=$((t + $(sed 's/.*) //' /proc/$p/stat | awk '{print $12 + $13}')))
  done
  python3 -c "print($t / $(getconf CLK_TCK))"
}

# server_rss PIDS...: the largest VmRSS among them, MiB.
server_rss() {
  local p m=0 k
  for p in "$@"; do
    k=$(awk '/^VmRSS:/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
    [ "${k:-0}" -gt "$m" ] && m=$k
  done
  python3 -c "print($m / 1024)"
}

# counter NAME PORTS...: the sum of a counter over the servers' /metrics.
counter() {
  local name=$1 total=0 p v
  shift
  for p in "$@"; do
    v=$(python3 - "$p" "$name" <<'PY'
import sys, urllib.request
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
except OSError:
    print(0); sys.exit()  # a killed server
print(sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith(sys.argv[2] + " ")))
PY
)
    total=$(python3 -c "print($total + $v)")
  done
  echo "$total"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "floats $FLOATS, steps $STEPS, interval ${INTERVAL} ms, R=$REPL, kill=$KILL, heartbeat timeout $HB_TIMEOUT ms, plaintext; work dir $WORK"
printf '%5s %2s %9s %8s %8s %9s %9s %9s %9s %8s %9s %9s %6s\n' N S us/hb rssKiB/w assign_s step_p50 step_p99 steps/s pushes/s MB/s fail_view resume_s exact
for s in ${SERVERS//,/ }; do
  for n in ${WORKERS//,/ }; do
    name=n$n.s$s
    PIDS=()
    "$BIN/server/coordinator/psd_coordinator" $(tls_flags "$CERTS" coordinator) \
      --replication_factor="$REPL" --heartbeat_timeout_ms="$HB_TIMEOUT" --log_level=warn \
      --port_file="$WORK/$name.c.port" 2>"$WORK/$name.coordinator.log" &
    cpid=$!
    PIDS+=($cpid)
    c=127.0.0.1:$(wait_port $cpid "$WORK/$name.c.port")
    kill_map="" mports=() spids=()
    for i in $(seq "$s"); do
      "$BIN/server/ps/psd_server" $(tls_flags "$CERTS" server) --coordinator="$c" \
        --log_level=warn --port_file="$WORK/$name.s$i.port" \
        --metrics_listen=127.0.0.1:0 --metrics_port_file="$WORK/$name.s$i.mport" \
        2>"$WORK/$name.server$i.log" &
      PIDS+=($!)
      spids+=($!)
      disown $!  # --kill SIGKILLs one: no job notice from bash
      port=$(wait_port $! "$WORK/$name.s$i.port")
      mports+=("$(wait_port $! "$WORK/$name.s$i.mport")")
      kill_map="$kill_map${kill_map:+,}127.0.0.1:$port=$!"
    done
    cpu0=$(server_cpu "${spids[@]}")
    push0=$(counter psd_server_push_requests_total "${mports[@]}")
    bytes0=$(counter psd_server_push_bytes_total "${mports[@]}")
    kill_flags=()
    [ "$KILL" = 1 ] && kill_flags=(--kill_pid_of="$kill_map" --kill_at_step=$((STEPS / 2)))
    t0=$(date +%s.%N)
    rc=0
    timeout $((DEADLINE + 30)) "$BIN/tests/bench/scale_bench_client" $(tls_flags "$CERTS" worker) \
      --coordinator="$c" --coordinator_pid=$cpid --workers="$n" \
      --floats="$FLOATS" --steps="$STEPS" --step_interval_ms="$INTERVAL" \
      --quiet_s="$QUIET" --deadline_s="$DEADLINE" --log_level=warn \
      "${kill_flags[@]}" $CLIENT_ARGS --out="$WORK/$name.json" \
      >"$WORK/$name.out" 2>"$WORK/$name.client.log" || rc=$?
    t1=$(date +%s.%N)
    cpu1=$(server_cpu "${spids[@]}")
    rss1=$(server_rss "${spids[@]}")
    push1=$(counter psd_server_push_requests_total "${mports[@]}")
    bytes1=$(counter psd_server_push_bytes_total "${mports[@]}")
    stop_processes "${PIDS[@]}" 2>/dev/null || true
    PIDS=()
    if [ $rc -ne 0 ]; then
      echo "N=$n S=$s: scale_bench_client exited $rc" >&2
      tail -n 20 "$WORK/$name.client.log" >&2
      exit 1
    fi
    python3 - "$WORK/$name.json" "$s" "$REPL" "$KILL" "$push0" "$push1" "$bytes0" "$bytes1" "$RESULTS" 0 "$cpu0" "$cpu1" "$rss1" "$HB_TIMEOUT" <<'PY'
import json, sys
path, s, repl, kill, p0, p1, b0, b1, out, tls, c0, c1, rss, _ = sys.argv[1:]
r = json.load(open(path))
r.update(heartbeat_timeout_ms=int(sys.argv[-1]), servers_started=int(s), replication=int(repl), kill=int(kill), tls=int(tls),
         server_push_requests=float(p1) - float(p0),
         server_push_bytes=float(b1) - float(b0),
         # All servers' CPU over the client's run (the killed one's up to
         # its kill is lost), and the largest server's RSS at the end.
         server_cpu_s=float(c1) - float(c0), server_rss_max_mib=float(rss))
# Every rank makes one Push call per shard per step (all of the shard's
# partitions in it); R > 1 adds no Push calls (replication is its own
# RPC). Retries after a failover add some.
r["expected_push_requests"] = r["workers"] * r.get("push_calls_per_step", 0) * r.get("steps", 0)
with open(out, "a") as f:
    f.write(json.dumps(r) + "\n")
g = lambda k: r.get(k) if r.get(k) is not None else float("nan")
print(f"{r['workers']:>5} {int(s):>2} {g('coordinator_cpu_us_per_heartbeat'):>9.1f} "
      f"{g('coordinator_rss_per_worker_kib'):>8.1f} {g('job_assign_all_s'):>8.2f} "
      f"{g('step_p50_ms'):>9.1f} {g('step_p99_ms'):>9.1f} {g('steps_per_s'):>9.2f} "
      f"{g('pushes_per_s'):>9.0f} {g('push_bytes_per_s') / 1e6:>8.1f} "
      f"{g('failover_view_all_s'):>9.2f} {g('failover_resume_s'):>9.2f} "
      f"{r['exactly_once']:>6}")
if r.get("job_state") != "SUCCEEDED":
    sys.exit(f"N={r['workers']} S={s}: job {r.get('job_state')}, not SUCCEEDED")
if r["exactly_once"] not in ("yes", "no steps"):
    sys.exit(f"N={r['workers']} S={s}: parameters differ from the exact replay")
if not int(kill) and r["server_push_requests"] < r["expected_push_requests"]:
    sys.exit(f"servers counted {r['server_push_requests']} pushes, "
             f"fewer than {r['expected_push_requests']}")
PY
  done
done
echo "results: $RESULTS; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
