#!/usr/bin/env bash
# Runs every ```sh block of docs/OPERATIONS.md, in order, against a live
# cluster, with buf curl standing in for grpcurl (tests/grpcurl_shim.sh).
# The submitted job is the doc's deploy/jobs/fashion_mnist_mlp.json, except
# that the blocks run in a folder where that path holds a 1-epoch job on
# 2,000 examples, so the watch recipe ends in seconds.
source tests/cluster_lib.sh

if [ -z "${PSD_BUF:-}" ] || [ ! -x "$PSD_BUF" ]; then
  echo "SKIP: buf not available (PSD_BUF unset); run tests/run_tests.sh, which installs it from npm"
  exit 0
fi
export PSD_BUF BUF_CACHE_DIR="$WORK/buf-cache" PSD_PROTO_DIR="$PWD/proto"
mkdir -p "$WORK/bin" "$WORK/docroot/deploy/jobs"
cp tests/grpcurl_shim.sh "$WORK/bin/grpcurl"
cp tests/grpcurl_shim_format.py "$WORK/bin/"
export PATH="$WORK/bin:$PATH"
cat >"$WORK/docroot/deploy/jobs/fashion_mnist_mlp.json" <<'JOB'
{"name": "fashion-mnist-mlp", "model": {"kind": "MLP", "inputDim": 784, "hiddenSizes": [32], "numClasses": 10, "initSeed": "1"},
 "dataset": {"name": "fashion-mnist", "trainLimit": 2000, "testLimit": 500},
 "optimizer": {"kind": "SGD", "learningRate": 0.05, "momentum": 0.9},
 "consistency": "BSP", "batchSize": 50, "epochs": 1, "workers": 2, "seed": "3"}
JOB

# Mutual TLS; the recipes' $TLS is user alice's certificate.
TLS_DIR=$WORK/certs
deploy/make_certs.sh "$TLS_DIR"
export TLS="-cacert $TLS_DIR/ca.pem -cert $TLS_DIR/user-alice.pem -key $TLS_DIR/user-alice.key"
start_cluster a 1 2
export C=$COORDINATOR
export SERVER=$("${CTL[@]}" view | grep -A3 '"servers"' | grep -o '"address": "[^"]*"' | head -1 | cut -d'"' -f4)
[ -n "$SERVER" ] || fail "no server in the view"

python3 - docs/OPERATIONS.md "$WORK/block" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
blocks, current = [], None
for line in lines:
    if current is None and line.strip() == "```sh":
        current = []
    elif current is not None and line.strip() == "```":
        blocks.append("\n".join(current) + "\n")
        current = None
    elif current is not None:
        current.append(line)
for i, block in enumerate(blocks):
    open(f"{sys.argv[2]}.{i:02d}.sh", "w").write(block)
print(len(blocks), "blocks")
PY

cd "$WORK/docroot"
ran=0
for block in "$WORK"/block.*.sh; do
  echo "--- $(head -1 "$block")"
  bash -euo pipefail "$block" >"$block.out" 2>&1 || { cat "$block.out"; fail "recipe failed: $(cat "$block")"; }
  head -c 600 "$block.out"; echo
  if grep -q 'SubmitJob' "$block"; then
    JOB=$(grep -o '"job_id": "[^"]*"' "$block.out" | head -1 | cut -d'"' -f4)
    [ -n "$JOB" ] || fail "SubmitJob returned no job_id"
    export JOB
  fi
  ran=$((ran + 1))
done
[ $ran -ge 10 ] || fail "only $ran recipes found in docs/OPERATIONS.md"
# The recipes' outputs say what they should.
grep -q '"status": "SERVING"' "$WORK"/block.01.sh.out || fail "health"
grep -h '"state": "SUCCEEDED"' "$WORK"/block.*.sh.out >/dev/null || fail "the watched job never SUCCEEDED"
echo "PASS ($ran recipes)"
