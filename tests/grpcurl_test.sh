#!/usr/bin/env bash
# The README's grpcurl recipes, run against a live cluster with `buf curl`
# (same protocol, same JSON; grpcurl itself is not packaged for Debian).
# tests/run_tests.sh installs buf from npm and passes its path as PSD_BUF.
source tests/cluster_lib.sh

if [ -z "${PSD_BUF:-}" ] || [ ! -x "$PSD_BUF" ]; then
  echo "SKIP: buf not available (PSD_BUF unset); run tests/run_tests.sh, which installs it from npm"
  exit 0
fi
export BUF_CACHE_DIR="$WORK/buf-cache"
# The cluster talks mutual TLS; the calls are user alice's.
TLS_DIR=$WORK/certs
deploy/make_certs.sh "$TLS_DIR"
AS_ALICE=(--cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/user-alice.pem" --key "$TLS_DIR/user-alice.key")
call() {  # call METHOD JSON -> response JSON (or the error JSON, exit 1)
  "$PSD_BUF" curl --protocol grpc "${AS_ALICE[@]}" -d "$2" \
    "https://$COORDINATOR/$1" 2>&1
}
# Health checks through reflection only, no .proto file (grpcurl's
# `grpcurl $TLS ADDR grpc.health.v1.Health/Check`).
health() {
  "$PSD_BUF" curl --protocol grpc "${AS_ALICE[@]}" -d '{}' \
    "https://$1/grpc.health.v1.Health/Check" 2>&1
}

start_cluster a 1 2

services=$("$PSD_BUF" curl --protocol grpc "${AS_ALICE[@]}" --list-services "https://$COORDINATOR" 2>&1)
for s in psd.v1.JobService psd.v1.Coordinator grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
  echo "$services" | grep_all -x "$s" || fail "list: $s missing in: $services"
done
health "$COORDINATOR" | grep_all '"status": "SERVING"' || fail "coordinator not SERVING"
view=$(call psd.v1.Coordinator/GetClusterView '{}')
echo "$view" | grep_all '"servers"' || fail "GetClusterView: $view"
server=$(echo "$view" | grep -o '"address": "[0-9.:]*"' | head -1 | cut -d'"' -f4)
health "$server" | grep_all '"status": "SERVING"' || fail "server $server not SERVING"
worker=$(echo "$view" | grep -A3 '"workers"' | grep -o '"address": "[0-9.:]*"' | head -1 | cut -d'"' -f4)
[ -n "$worker" ] || fail "no worker address in the view: $view"
health "$worker" | grep_all '"status": "SERVING"' || fail "worker $worker not SERVING"
"$PSD_BUF" curl --protocol grpc "${AS_ALICE[@]}" --list-services "https://$worker" |
  grep -q grpc.reflection.v1alpha.ServerReflection || fail "worker serves no reflection"

# Submit the quick-start job's JSON twice: one to cancel, one to watch.
submitted=$(call psd.v1.JobService/SubmitJob "@deploy/jobs/fashion_mnist_mlp.json")
job=$(echo "$submitted" | grep -o '"jobId": "[^"]*"' | cut -d'"' -f4)
[ -n "$job" ] || fail "SubmitJob: $submitted"
call psd.v1.JobService/GetJob "{\"jobId\": \"$job\"}" | grep_all '"state": "\(PENDING\|RUNNING\)"' ||
  fail "GetJob: not PENDING or RUNNING"
call psd.v1.JobService/ListJobs '{}' | grep_all "\"jobId\": \"$job\"" || fail "ListJobs lacks $job"
call psd.v1.JobService/CancelJob "{\"jobId\": \"$job\"}" | grep_all '"state": "CANCELLED"' ||
  fail "CancelJob did not cancel"

# A bad config: INVALID_ARGUMENT naming the field.
bad=$(call psd.v1.JobService/SubmitJob '{"name": "bad", "model": {"kind": "MLP", "inputDim": 784, "numClasses": 10}, "dataset": {}, "optimizer": {"learningRate": 0.1}, "batchSize": -1, "epochs": 1, "workers": 1}' || true)
echo "$bad" | grep_all '"code": "invalid_argument"' || fail "bad config: $bad"
echo "$bad" | grep_all 'batch_size: must be in' || fail "bad config message: $bad"
unknown=$(call psd.v1.JobService/GetJob '{"jobId": "no-such-job"}' || true)
echo "$unknown" | grep_all '"code": "not_found"' || fail "unknown job: $unknown"

# The short job runs to the end once the cancelled one has freed the workers.
short=$(call psd.v1.JobService/SubmitJob '{"name": "short", "model": {"kind": "MLP", "inputDim": 784, "hiddenSizes": [32], "numClasses": 10, "initSeed": "1"}, "dataset": {"name": "fashion-mnist", "trainLimit": 2000, "testLimit": 500}, "optimizer": {"kind": "SGD", "learningRate": 0.05, "momentum": 0.9}, "batchSize": 50, "epochs": 1, "workers": 2, "seed": "3"}')
id=$(echo "$short" | grep -o '"jobId": "[^"]*"' | cut -d'"' -f4)
"${CTL[@]}" watch "$id" || fail "job $id did not succeed"
call psd.v1.JobService/GetJob "{\"jobId\": \"$id\"}" | grep_all '"state": "SUCCEEDED"' || fail "GetJob $id"

# The README's grpcurl block, line by line as written, with the shim as
# grpcurl (text format parsed as grpcurl would, grpcurl's output keys). Its
# quick-start job takes the workers; the text-format one waits and is
# cancelled.
mkdir -p "$WORK/bin"
cp tests/grpcurl_shim.sh "$WORK/bin/grpcurl"
cp tests/grpcurl_shim_format.py "$WORK/bin/"
awk '/^### Drive it with grpcurl/ {on = 1} on && /^```sh/ {body = 1; next}
     body && /^```/ {exit} body' README.md >"$WORK/readme_block.sh"
grep -q -- '-format text' "$WORK/readme_block.sh" || fail "README block not found"
grep -q '^C=' "$WORK/readme_block.sh" || fail "README block sets no C"
grep -q '^TLS=' "$WORK/readme_block.sh" || fail "README block sets no TLS"
sed -i '/^C=/d; /^TLS=/d' "$WORK/readme_block.sh"  # our coordinator, our certificates
TLS="-cacert $TLS_DIR/ca.pem -cert $TLS_DIR/user-alice.pem -key $TLS_DIR/user-alice.key" \
  C=$COORDINATOR PSD_PROTO_DIR="$PWD/proto" PATH="$WORK/bin:$PATH" \
  bash -euo pipefail -x "$WORK/readme_block.sh" >"$WORK/readme.out" 2>&1 ||
  { cat "$WORK/readme.out"; fail "a README grpcurl line failed"; }
grep -q '"job_id": "fashion-mnist-mlp-[0-9]*"' "$WORK/readme.out" || fail "README: no job_id"
grep -q '"state": "CANCELLED"' "$WORK/readme.out" || fail "README: CancelJob"
grep -q '"status": "SERVING"' "$WORK/readme.out" || fail "README: health"
echo PASS
