#!/usr/bin/env bash
# Push+pull throughput and latency against real processes (issue 14): a
# psd_coordinator, S psd_servers and W workers, each its own process on
# 127.0.0.1, through the real push path (validation, BSP, SGD, replication).
# The workers are cluster_push_pull_client --mode=worker: they register with
# the coordinator like psd_worker, get their rank of a submitted job in a
# heartbeat, and use ParameterClient (worker/ps_client.h) as psd_worker does.
#
# Workload (as ps-lite's benchmark): each of the W workers pushes its
# gradient of every parameter (N floats in all), the servers apply the step
# (BSP: once every rank pushed; SGD, lr 1e-9, momentum 0), then each worker
# pulls the parameters back; repeat. The job is an MLP 784 -> H -> 10 with
# H = round(N / 795), so ~N floats, 98.6% of them in layer0.weight; the
# payload is counted from the placement's real parameter sizes. GB/s =
# W x 2 x floats x 4 bytes per step / seconds per step (10^9 bytes/s),
# median over repetitions (a repetition's time is its slowest rank's).
# Configurations (S x W, replication R): 1x1 R=1; 1x1 R=2 runs on 2 servers
# (R=2 needs 2) with 1 worker; 2x2 R=1; 2x2 R=2.
# Baseline, in the same run: a plain gRPC echo (tests/bench/echo.proto) of
# the same bytes: W client processes, rank r sending its floats x 4 bytes as
# one message to its own echo server process and receiving them back;
# psd/echo per size.
# Latency: 1 KiB push+pull round trip, 1 worker, R=1 and R=2: raw
# ParameterServer/Push then /Pull of the single 256-float partition of
# layer0.bias (model 784 -> 256 -> 10), p50 and p99 in microseconds.
#
# TLS cost (--tls): every configuration runs twice in the same run, in
# plaintext (--insecure) and with every process on mutual TLS (certificates
# from deploy/make_certs.sh; config name suffix _tls), and a last table
# gives TLS/plaintext per configuration and size. The echo baseline stays
# plaintext.
#
# Usage: tests/bench/cluster_push_pull_bench.sh [--quick] [--sizes LIST]
#            [--reps N] [--lat_iters N] [--tls]
#   --sizes LIST  floats per worker, comma-separated, K/M = 2^10/2^20
#                 (default 1M,4M,16M)
#   --reps N      timed repetitions per size (default 5); each moves about
#                 64 MiB per rank (16M floats), after 2 untimed steps
#   --lat_iters N 1 KiB round trips timed per configuration (default 2000)
#   --quick       a tiny run (sizes 64K, 3 repetitions of 2 steps, 50 round
#                 trips): checks that everything works; not a measurement
# From the repository root, after
#   bazel build //server/... //deploy:psd_ctl //tests/bench:cluster_push_pull_client
# or through Bazel: bazel run //tests/bench:cluster_push_pull_bench -- [...]
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
SIZES=1M,4M,16M
REPS=5
STEPS=0  # per repetition; 0: about 16M floats' worth per rank
LAT_ITERS=2000
TLS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) SIZES=64K; REPS=3; STEPS=2; LAT_ITERS=50; shift ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --lat_iters) LAT_ITERS="$2"; shift 2 ;;
    --tls) TLS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster_push_pull_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -d "${RUNFILES_DIR:-$0.runfiles}/psd" ]; then
  cd "${RUNFILES_DIR:-$0.runfiles}/psd"
  SRC=.
else
  cd "$(dirname "$0")/../.."
  SRC=bazel-bin
fi
source deploy/processes.sh
WORK=$(mktemp -d "${TEST_TMPDIR:-${TMPDIR:-/tmp}}/psd-clusterbench.XXXXXX")
# A private copy of the binaries: a build running meanwhile cannot swap them.
BIN=$WORK/bin
for b in server/coordinator/psd_coordinator server/ps/psd_server deploy/psd_ctl \
  tests/bench/cluster_push_pull_client; do
  mkdir -p "$BIN/$(dirname $b)" && cp "$SRC/$b" "$BIN/$b"
done
CLIENT=$BIN/tests/bench/cluster_push_pull_client
OUT=$WORK/out
mkdir -p "$OUT"
MANIFEST=$WORK/manifest  # one line per measurement: KIND CONFIG S W R N FILES...
PIDS=()
on_exit() {
  local code=$?
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  rm -rf "$BIN"  # the copies; logs and results stay in $WORK
  if [ $code -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
    done >&2
  fi
  exit $code
}
trap on_exit EXIT

floats_of() {  # 64K -> 65536, 1M -> 1048576
  case "$1" in
    *K) echo $((${1%K} << 10)) ;;
    *M) echo $((${1%M} << 20)) ;;
    *) echo "$1" ;;
  esac
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sizes: $SIZES floats per worker; $REPS repetitions; work dir $WORK"

CERTS=""
if [ "$TLS" = 1 ]; then
  deploy/make_certs.sh "$WORK/certs" >/dev/null
fi

# cluster NAME SERVERS WORKERS R [CERTS]: a fresh coordinator
# (--replication_factor R), servers and benchmark workers, on mutual TLS
# with the certificates in CERTS, plaintext without; sets CTL.
cluster() {
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  local name=$1 s=$2 w=$3 r=$4 certs=${5:-} i c
  # Job ids restart with each coordinator: results go to a folder per cluster.
  CLUSTER_OUT=$OUT/$name
  mkdir -p "$CLUSTER_OUT"
  "$BIN/server/coordinator/psd_coordinator" $(tls_flags "$certs" coordinator) --replication_factor="$r" \
    --port_file="$WORK/$name.c.port" 2>"$WORK/$name.coordinator.log" &
  PIDS+=($!)
  c=127.0.0.1:$(wait_port $! "$WORK/$name.c.port")
  for i in $(seq "$s"); do
    "$BIN/server/ps/psd_server" $(tls_flags "$certs" server) --coordinator="$c" --log_level=warn \
      2>"$WORK/$name.server$i.log" &
    PIDS+=($!)
  done
  for i in $(seq "$w"); do
    "$CLIENT" $(tls_flags "$certs" worker) --mode=worker --coordinator="$c" --out_dir="$CLUSTER_OUT" \
      --warmup=2 --reps="$REPS" --steps="$STEPS" --lat_iters="$LAT_ITERS" \
      2>"$WORK/$name.worker$i.log" &
    PIDS+=($!)
  done
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$c" $([ -z "$certs" ] || tls_flags "$certs" user-alice))
  "${CTL[@]}" --servers="$s" --workers="$w" --timeout_s=30 wait-ready >/dev/null
}

# job KIND HIDDEN WORKERS: submits a job named KIND ("tput" or "lat", which
# the workers run), waits for it to succeed, deletes it (freeing the
# servers' memory); prints the job id.
job() {
  local file=$WORK/$1.textproto id
  cat >"$file" <<JOB
name: "$1"
model { kind: MLP input_dim: 784 hidden_sizes: [$2] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" }
optimizer { kind: SGD learning_rate: 1e-9 momentum: 0 }
consistency: BSP
batch_size: 64
epochs: 1
workers: $3
seed: 1
JOB
  id=$("${CTL[@]}" submit "$file")
  timeout 900 "${CTL[@]}" watch "$id" >"$WORK/$id.watch" ||
    { cat "$WORK/$id.watch" >&2; echo "job $id did not succeed" >&2; return 1; }
  "${CTL[@]}" get "$id" >"$CLUSTER_OUT/$id.status.json"
  "${CTL[@]}" delete "$id" >/dev/null
  echo "$id"
}

# echo_run CONFIG WORKERS FLOATS NOMINAL: the echo baseline, WORKERS clients
# at once, each to its own echo server.
echo_run() {
  local config=$1 w=$2 floats=$3 nominal=$4 i servers="" files="" pids=()
  for i in $(seq "$w"); do
    "$CLIENT" --insecure --mode=echo_server --port_file="$WORK/echo.$config.$i.port" \
      2>"$WORK/echo_server.$config.$i.log" &
    PIDS+=($!)
    servers="$servers${servers:+,}127.0.0.1:$(wait_port $! "$WORK/echo.$config.$i.port")"
  done
  for i in $(seq 0 $((w - 1))); do
    local f=$OUT/echo.$config.$nominal.rank$i.json
    "$CLIENT" --insecure --mode=echo --echo_servers="$servers" --rank="$i" \
      --floats="$floats" --warmup=2 --reps="$REPS" --steps="$STEPS" --out="$f" \
      2>"$WORK/echo.$config.$nominal.$i.log" &
    pids+=($!)
    files="$files $f"
  done
  for i in "${pids[@]}"; do wait "$i"; done
  echo "echo $config 0 $w 0 $nominal$files" >>"$MANIFEST"
}

# name SERVERS WORKERS R
CONFIGS=("1x1_R1 1 1 1" "1x1_R2 2 1 2" "2x2_R1 2 2 1" "2x2_R2 2 2 2")
declare -A ECHO_FLOATS  # nominal N -> the floats psd moved per worker
RUNS=("${CONFIGS[@]}")
if [ "$TLS" = 1 ]; then
  for cfg in "${CONFIGS[@]}"; do RUNS+=("${cfg/ /_tls } $WORK/certs"); done
fi
for cfg in "${RUNS[@]}"; do
  read -r name s w r certs <<<"$cfg"
  cluster "$name" "$s" "$w" "$r" "$certs"
  for size in ${SIZES//,/ }; do
    n=$(floats_of "$size")
    hidden=$(( (n + 397) / 795 ))
    id=$(job tput "$hidden" "$w")
    files=$(ls "$CLUSTER_OUT/$id".rank*.json | tr '\n' ' ')
    echo "tput $name $s $w $r $n $files" >>"$MANIFEST"
    ECHO_FLOATS[$n]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["floats"])' "$CLUSTER_OUT/$id.rank0.json")
    echo "$name (S=$s W=$w R=$r), $size floats per worker: job $id done"
  done
  if [ "$w" -eq 1 ]; then
    id=$(job lat 256 1)
    echo "lat $name $s $w $r 256 $CLUSTER_OUT/$id.rank0.json" >>"$MANIFEST"
    echo "$name (S=$s W=$w R=$r), 1 KiB round trips: job $id done"
  fi
done
stop_processes "${PIDS[@]}" 2>/dev/null || true
PIDS=()
for w in 1 2; do
  for size in ${SIZES//,/ }; do
    n=$(floats_of "$size")
    echo_run "${w}x${w}" "$w" "${ECHO_FLOATS[$n]}" "$n"
  done
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
done
echo "echo baseline done; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$MANIFEST" <<'PY'
import json, math, statistics, sys

rows = [l.split() for l in open(sys.argv[1])]
def load(files):
    return [json.load(open(f)) for f in files]

def step_gbs(results, workers):
    """Median over repetitions of push+pull GB/s (slowest rank per rep)."""
    floats = results[0]["floats"]
    k = results[0]["steps_per_rep"]
    reps = zip(*(r["rep_seconds"] for r in results))
    step_s = [max(t) / k for t in reps]
    gbs = [workers * 2 * floats * 4 / s / 1e9 for s in step_s]
    return statistics.median(gbs), statistics.median(step_s), floats, len(step_s)

def check_job(config, s, r, files):
    """The job really ran as configured: R replicas of every shard on S
    servers, and the workers moved every float of the placement."""
    status = json.load(open(files[0].rsplit(".rank", 1)[0] + ".status.json"))
    replicas = {1 + len(sh.get("backups", [])) for sh in status["shards"]}
    if replicas != {int(r)} or len(status["servers"]) != int(s):
        sys.exit(f"{config}: replicas per shard {replicas}, servers "
                 f"{len(status['servers'])}; want R={r}, S={s}")
    placed = sum(int(p["numElements"]) for p in status["placement"]["partitions"])
    if any(res["kind"] == "tput" and res["floats"] != placed
           for res in load(files)):
        sys.exit(f"{config}: a worker moved other than the {placed} floats placed")

echo = {}
for kind, config, s, w, r, n, *files in rows:
    if kind in ("tput", "lat"):
        check_job(config, s, r, files)
    if kind == "echo":
        echo[(int(w), int(n))] = step_gbs(load(files), int(w))

print()
print("Cluster push/pull over loopback: medians; GB/s = 1e9 bytes/s of "
      "push+pull payload (W x 2 x floats x 4 bytes per step)")
print("allocator: glibc malloc tuned by psd::TuneAllocator() (M_MMAP_MAX=0, "
      "no trim, M_ARENA_MAX=2) in every process")
print(f"{'config':<8} {'S':>2} {'W':>2} {'R':>2} {'nominal_N':>10} "
      f"{'floats/worker':>13} {'psd_GB/s':>9} {'step_ms':>8} "
      f"{'echo_GB/s':>9} {'psd/echo':>8} {'reps':>4}")
for kind, config, s, w, r, n, *files in rows:
    if kind != "tput":
        continue
    gbs, step_s, floats, reps = step_gbs(load(files), int(w))
    e = echo.get((int(w), int(n)))
    print(f"{config:<8} {s:>2} {w:>2} {r:>2} {int(n):>10} {floats:>13} "
          f"{gbs:>9.3f} {1e3 * step_s:>8.2f} "
          f"{e[0] if e else float('nan'):>9.3f} "
          f"{gbs / e[0] if e else float('nan'):>8.3f} {reps:>4}")
print("(Checked per job: every shard had R replicas on S servers, and every "
      "worker moved all the placement's floats. 1x1_R2 runs 2 servers and 1 "
      "worker: R=2 needs 2 servers. Echo: W "
      "clients, each to its own echo server, one message of floats x 4 bytes.)")
print()
print("1 KiB push+pull round trip (raw Push + Pull of one 256-float "
      "partition, 1 worker)")
print(f"{'config':<8} {'S':>2} {'R':>2} {'p50_us':>9} {'p99_us':>9} {'n':>6}")
for kind, config, s, w, r, n, *files in rows:
    if kind != "lat":
        continue
    us = sorted(load(files)[0]["round_trip_us"])
    p = lambda q: us[max(0, math.ceil(q * len(us)) - 1)]  # nearest rank
    print(f"{config:<8} {s:>2} {r:>2} {p(0.50):>9.1f} {p(0.99):>9.1f} {len(us):>6}")

# --tls: each configuration with mutual TLS against the same in plaintext.
tput = {}
lat = {}
for kind, config, s, w, r, n, *files in rows:
    if kind == "tput":
        tput[(config, int(n))] = step_gbs(load(files), int(w))[0]
    elif kind == "lat":
        lat[config] = statistics.median(load(files)[0]["round_trip_us"])
pairs = [(c, n) for (c, n) in tput if not c.endswith("_tls")
         and (c + "_tls", n) in tput]
if pairs:
    print()
    print("TLS cost, same run: mutual TLS / plaintext (GB/s ratio < 1: TLS "
          "slower; latency ratio > 1: TLS slower)")
    print(f"{'config':<8} {'nominal_N':>10} {'plain_GB/s':>10} "
          f"{'tls_GB/s':>9} {'tls/plain':>9}")
    for c, n in pairs:
        a, b = tput[(c, n)], tput[(c + "_tls", n)]
        print(f"{c:<8} {n:>10} {a:>10.3f} {b:>9.3f} {b / a:>9.3f}")
    for c in lat:
        if not c.endswith("_tls") and c + "_tls" in lat:
            print(f"{c:<8} 1 KiB round trip p50: plaintext {lat[c]:.1f} us, "
                  f"TLS {lat[c + '_tls']:.1f} us, tls/plain "
                  f"{lat[c + '_tls'] / lat[c]:.3f}")
PY
