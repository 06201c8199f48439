#!/usr/bin/env bash
# Runs tests/bench/overlap_bench.sh once per setting on a tiny job (15 steps
# per worker): it must finish, print its summary, and find the same
# parameters with and without the overlap. Not a measurement.
set -euo pipefail
job="$TEST_TMPDIR/tiny.textproto"
cat >"$job" <<'JOB'
name: "overlap-smoke"
model { kind: MLP input_dim: 784 hidden_sizes: [32] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 2000 test_limit: 500 }
optimizer { kind: SGD learning_rate: 0.02 momentum: 0.9 }
consistency: BSP
batch_size: 64
epochs: 1
workers: 2
seed: 3
JOB
out=$(RUNFILES_DIR="$TEST_SRCDIR" tests/bench/overlap_bench.sh 1 "$job")
echo "$out"
echo "$out" | grep -q "^on/off: steps/s x" || { echo "FAIL: no summary" >&2; exit 1; }
echo "$out" | grep -q "^checksums: crc32:[0-9a-f]*$" ||
  { echo "FAIL: the settings exported different parameters" >&2; exit 1; }
echo PASS
