#!/usr/bin/env bash
# Time to accuracy (issue 14): psd's quick start against PyTorch on the same
# machine, in the same run. Each round runs, back to back:
#   psd     ./deploy/run_local.sh [PSD_ARGS] (1 coordinator, 3 servers at
#           R=2, 2 workers x batch 64; the quick-start job; mutual TLS
#           unless PSD_ARGS has --insecure: for a like-for-like comparison
#           with gloo, which is plaintext, pass -- --insecure);
#   ddp     PyTorch DDP, gloo on 127.0.0.1, 2 processes x 1 thread x batch 64;
#   single  PyTorch, one process, 1 thread, batch 128;
# (tests/bench/torch_baseline.py: same model, init family, normalisation
# and optimizer). Prints each run and, over the rounds, the median time to
# TARGET test accuracy (all 10,000 test images, evaluated after each
# epoch; evaluation inside the time on both sides, start-up and data
# loading outside it), the median seconds per epoch, and psd's ratios
# against both baselines. psd's times are its worker rank 0's log
# timestamps: from "N steps per epoch" (training starts) to the first
# "epoch E done ... test accuracy A" with A >= TARGET.
#
# Also checks what must not change: every psd run of each kind (psd,
# psd_base) reaches the same final accuracy and parameter checksum (BSP is
# deterministic), and says whether the two kinds' parameters are the same.
#
# Usage: tests/bench/time_to_accuracy.sh [ROUNDS] [TARGET] [-- PSD_ARGS...]
#   ROUNDS default 3, TARGET default 0.88. PyTorch runs 10 epochs (it may
#   need more than psd's 8 to reach the target); the psd job is
#   deploy/jobs/fashion_mnist_mlp.textproto unless PSD_ARGS has --job.
#   With PSD_BASELINE_ARGS set (run_local.sh arguments, e.g.
#   "--worker-flag=--shared_memory=false"), each round also runs psd with
#   them ("psd_base"), for a before/after ratio in the same run. With
#   PSD_BASELINE_TREE set (another checkout of psd, e.g. a `git worktree`
#   of an older commit), psd_base runs that tree's run_local.sh (and its
#   build), with PSD_BASELINE_ARGS if set: before/after across commits.
# Needs python3-torch (Debian); installs it with apt-get when it is missing
# (the test suite never needs it). Run from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
TARGET=${2:-0.88}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
PSD_ARGS=("$@")
PY=/usr/bin/python3

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "==> installing python3-torch (Debian) for the baselines"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch >/dev/null
fi
echo "==> machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> torch $("$PY" -c 'import torch; print(torch.__version__)'), $(date -u +%FT%TZ)"

# psd_run TREE [RUN_LOCAL_ARGS...]: one quick start of the checkout TREE;
# prints "time_s epoch_s final_acc checksum".
psd_run() {
  local out dir log tree=$1
  shift
  out=$(cd "$tree" && ./deploy/run_local.sh "$@" 2>&1) || { echo "$out" >&2; return 1; }
  dir=$(echo "$out" | sed -n 's/.*(logs: \(\/tmp\/psd-local\.[A-Za-z0-9]*\)).*/\1/p' | head -1)
  log=$(grep -l "epoch 0 done" "$dir"/worker*.log | head -1)
  local checksum
  checksum=$(echo "$out" | grep -o 'crc32:[0-9a-f]*' | tail -1)
  "$PY" - "$log" "$TARGET" "$checksum" <<'PY'
import re, sys
from datetime import datetime
log, target, checksum = sys.argv[1], float(sys.argv[2]), sys.argv[3]
def ts(line):
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
start = reached = None
epochs = []
for line in open(log):
    if start is None and "steps per epoch" in line:
        start = ts(line)
    m = re.search(r"epoch (\d+) done, .*test accuracy ([0-9.]+)", line)
    if m:
        epochs.append((ts(line), float(m.group(2))))
        if reached is None and float(m.group(2)) >= target:
            reached = ts(line) - start
per_epoch = (epochs[-1][0] - start) / len(epochs)
print(f"{reached if reached is not None else float('nan'):.3f} {per_epoch:.3f} "
      f"{epochs[-1][1]:.4f} {checksum or '-'}")
PY
}

# torch_run MODE: prints "time_s epoch_s final_acc".
torch_run() {
  local json
  json=$("$PY" tests/bench/torch_baseline.py --mode "$1" --epochs 10 \
      --target "$TARGET" --threads 1 | tail -1)
  "$PY" - "$json" <<'PY'
import json, statistics, sys
r = json.loads(sys.argv[1])
t = r["time_to_target_s"]
t = float("nan") if t is None else t
print(f"{t:.3f} {statistics.mean(r['epoch_s']):.3f} {r['accuracy'][-1]:.4f}")
PY
}

declare -a PSD BASE DDP SINGLE
read -r -a BASE_ARGS <<<"${PSD_BASELINE_ARGS:-}"
printf '%-6s %-9s %14s %10s %9s  %s\n' round run "time_to_${TARGET}_s" epoch_s final_acc checksum
for r in $(seq "$ROUNDS"); do
  p=$(psd_run . ${PSD_ARGS[@]+"${PSD_ARGS[@]}"}); PSD+=("$p")
  printf '%-6s %-9s %14s %10s %9s  %s\n' "$r" psd $p
  if [ ${#BASE_ARGS[@]} -gt 0 ] || [ -n "${PSD_BASELINE_TREE:-}" ]; then
    b=$(psd_run "${PSD_BASELINE_TREE:-.}" ${PSD_ARGS[@]+"${PSD_ARGS[@]}"} \
      ${BASE_ARGS[@]+"${BASE_ARGS[@]}"}); BASE+=("$b")
    printf '%-6s %-9s %14s %10s %9s  %s\n' "$r" psd_base $b
  fi
  d=$(torch_run ddp); DDP+=("$d")
  printf '%-6s %-9s %14s %10s %9s\n' "$r" ddp $d
  s=$(torch_run single); SINGLE+=("$s")
  printf '%-6s %-9s %14s %10s %9s\n' "$r" single $s
done

"$PY" - "$TARGET" "${PSD[@]/#/psd }" ${BASE[@]+"${BASE[@]/#/psd_base }"} \
    "${DDP[@]/#/ddp }" "${SINGLE[@]/#/single }" <<'PY'
import math, statistics, sys
target = sys.argv[1]
runs = {}
for arg in sys.argv[2:]:
    kind, *fields = arg.split()
    runs.setdefault(kind, []).append(fields)
def med(kind, i):
    values = [float(f[i]) for f in runs[kind]]
    return statistics.median(values)
print(f"medians over {len(runs['psd'])} rounds:")
kinds = [k for k in ("psd", "psd_base", "ddp", "single") if k in runs]
for kind in kinds:
    print(f"  {kind:8s} time to {target}: {med(kind, 0):.2f} s, "
          f"{med(kind, 1):.3f} s per epoch, final accuracy {med(kind, 2):.4f}")
for base in kinds[1:]:
    print(f"psd/{base}: time to {target} x{med('psd', 0) / med(base, 0):.2f}, "
          f"per epoch x{med('psd', 1) / med(base, 1):.2f}")
# BSP is deterministic: the runs of each kind agree. psd and psd_base agree
# too unless the baseline changes what is computed (e.g. another --job).
failed = False
for kind in ("psd", "psd_base"):
    if kind not in runs:
        continue
    sums = {f[3] for f in runs[kind]}
    accs = {f[2] for f in runs[kind]}
    print(f"{kind} checksums: {' '.join(sorted(sums))}; final accuracies: {' '.join(sorted(accs))}")
    if len(sums) != 1 or len(accs) != 1:
        print(f"FAIL: {kind} runs disagree (BSP must be deterministic)")
        failed = True
if "psd_base" in runs:
    same = runs["psd"][0][3] == runs["psd_base"][0][3]
    print(f"psd and psd_base parameters: {'the same' if same else 'different'}")
sys.exit(1 if failed else 0)
PY
