#!/usr/bin/env bash
# psd_serve end to end (issue 17, first slice): a real cluster trains the
# short job, evaluated on all 10,000 Fashion-MNIST test images; `psd_ctl
# export` writes it; psd_serve serves the export over the Open Inference
# Protocol (gRPC, --insecure); oip_classify sends every test image, 7 rows a
# request from 8 threads (so the dynamic batcher mixes requests), and the
# accuracy it counts must be exactly the one the job reported (same
# normalisation, same forward pass, batch-independent logits). Then
# psd_serve shuts down cleanly on SIGTERM.
# Then (issue 17, second slice): a psd_serve that pulled the same job from
# the live cluster (--coordinator --job) answers every test image as the
# file's does; the HTTP/JSON API answers every image as gRPC does; bad
# HTTP requests get their status and field; the model file replaced (a
# damaged file, then a new version) while a client loop runs: no request
# fails and the new version is served; /metrics passes promtool when
# Debian's prometheus is installed; HTTPS under mutual TLS.
source tests/cluster_lib.sh

write_short_job "$WORK/short.textproto"
sed -i 's/ test_limit: 2000//' "$WORK/short.textproto"
grep -q 'test_limit' "$WORK/short.textproto" && fail "sed did not drop test_limit"
start_cluster a 2 2
checksum=$(run_job "$WORK/short.textproto" "$WORK/short.safetensors")
job=$(cat "$WORK/last_job")
status=$("${CTL[@]}" get "$job")
echo "$status" | grep_all '"state": "SUCCEEDED"' || fail "job not SUCCEEDED: $status"
# The job's own accuracy (the first testAccuracy: the job's, before the
# per-epoch history), after the last epoch, over all 10,000 test images.
accuracy=$(echo "$status" | grep -o '"testAccuracy": [0-9.e-]*' | head -1 | awk '{print $2}')
echo "job $job ($checksum): test accuracy $accuracy"
[ -n "$accuracy" ] || fail "no testAccuracy in: $status"
# The same job pulled from the live cluster (psd_ctl export's code path).
"$BIN/server/serving/psd_serve" --insecure --coordinator="$COORDINATOR" --job="$job" \
  --model_name=fashion --listen=127.0.0.1:0 --port_file="$WORK/serve_job.port" \
  2>"$WORK/serve_job.log" &
JOB_SERVE_PID=$!
PIDS+=($JOB_SERVE_PID)
job_port=$(wait_port $JOB_SERVE_PID "$WORK/serve_job.port") ||
  { cat "$WORK/serve_job.log"; fail "psd_serve --job did not start"; }
grep -q "loaded version 1 from job $job on $COORDINATOR" "$WORK/serve_job.log" ||
  fail "psd_serve --job did not log the job it pulled"
# Not a job that finished: refused at start, naming the flag.
if "$BIN/server/serving/psd_serve" --insecure --coordinator="$COORDINATOR" --job=nojob \
  --model_name=fashion --listen=127.0.0.1:0 2>"$WORK/serve_nojob.log"; then
  fail "psd_serve served an unknown job"
fi
grep -q "nojob" "$WORK/serve_nojob.log" || { cat "$WORK/serve_nojob.log"; fail "unclear unknown-job error"; }
# The CPUs, for the serving part: the cluster stops; psd_serve --job, which
# no longer needs it, stays.
CLUSTER_PIDS=()
for p in "${PIDS[@]}"; do [ "$p" = "$JOB_SERVE_PID" ] || CLUSTER_PIDS+=($p); done
PIDS=("${CLUSTER_PIDS[@]}")
stop_cluster
PIDS+=($JOB_SERVE_PID)

cp "$WORK/short.safetensors" "$WORK/live.safetensors"
"$BIN/server/serving/psd_serve" --insecure --model_file="$WORK/live.safetensors" \
  --model_name=fashion --listen=127.0.0.1:0 --port_file="$WORK/serve.port" \
  --http_listen=127.0.0.1:0 --http_port_file="$WORK/serve.http_port" --poll_s=0.2 \
  --metrics_listen=127.0.0.1:0 --metrics_port_file="$WORK/serve.metrics_port" \
  --max_batch_size=64 --max_queue_delay_microseconds=2000 2>"$WORK/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
port=$(wait_port $SERVE_PID "$WORK/serve.port") || fail "psd_serve did not start"
http_port=$(cat "$WORK/serve.http_port")
metrics_port=$(cat "$WORK/serve.metrics_port")
grep -q "serving model fashion (MLP \[784,256,128,10\]" "$WORK/serve.log" ||
  fail "psd_serve did not log the model it serves"

CLASSIFY=("$BIN/server/serving/oip_classify" --model_name=fashion --print_classes)
"${CLASSIFY[@]}" --insecure --server="127.0.0.1:$port" --rows=7 --concurrency=8 \
  >"$WORK/grpc.classes" || fail "oip_classify failed"
result=$(grep '^correct' "$WORK/grpc.classes")
echo "served: $result"
correct=$(echo "$result" | awk '{print $2}')
total=$(echo "$result" | awk '{print $4}')
[ "$total" = 10000 ] || fail "classified $total images, want 10000"
# Exactly: the job's float accuracy is correct/10000 rounded to float, so
# the counts must agree to well under one image.
awk -v a="$accuracy" -v c="$correct" 'BEGIN { d = a * 10000 - c; exit !(d < 0.01 && d > -0.01) }' ||
  fail "served accuracy $correct/10000 differs from the job's $accuracy"

# The job pulled from the cluster: the same class for every image.
"${CLASSIFY[@]}" --server="127.0.0.1:$job_port" --rows=7 --concurrency=8 \
  >"$WORK/job.classes" || fail "oip_classify (psd_serve --job) failed"
cmp -s <(grep ^image "$WORK/grpc.classes") <(grep ^image "$WORK/job.classes") ||
  fail "the model pulled from the cluster classifies differently from its export"
kill -TERM $JOB_SERVE_PID
echo "psd_serve --job: all 10000 classes equal to the export's"

# HTTP/JSON: the same class for every image as gRPC.
"${CLASSIFY[@]}" --http --server="127.0.0.1:$http_port" --rows=7 --concurrency=8 \
  >"$WORK/http.classes" || fail "oip_classify --http failed"
cmp -s <(grep ^image "$WORK/grpc.classes") <(grep ^image "$WORK/http.classes") ||
  fail "HTTP classifies differently from gRPC"
echo "HTTP/JSON: all 10000 classes equal to gRPC's"

# Bad HTTP requests: status and field named, in an {"error": ...} body.
mkdir -p "$WORK/json"
"$BIN/server/serving/oip_classify" --model_name=fashion --write_json="$WORK/json" \
  --limit=2 --rows=2 || fail "oip_classify --write_json failed"
good=$(cat "$WORK/json/request_0.json")
http_expect() {  # PATH BODY STATUS TEXT
  local code
  code=$(curl -s -o "$WORK/http.reply" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "$2" "http://127.0.0.1:$http_port$1")
  [ "$code" = "$3" ] || fail "POST $1 ${2:0:80}: HTTP $code, want $3: $(cat "$WORK/http.reply")"
  grep -qF -- "$4" "$WORK/http.reply" || fail "POST $1: reply does not name '$4': $(cat "$WORK/http.reply")"
  grep -q '^{"error":' "$WORK/http.reply" || fail "POST $1: not an error body: $(cat "$WORK/http.reply")"
}
sub() { printf '%s' "${good/"$1"/"$2"}"; }  # the good body, one string replaced
infer=/v2/models/fashion/infer
http_expect $infer '{"inputs": [' 400 'request body: not a JSON object'
http_expect $infer "$(sub '"shape":[2,784]' '"shape":[2,783]')" 400 'inputs[0].shape: [2,783], want [1..64, 784]'
http_expect $infer "$(sub '"datatype":"FP32"' '"datatype":"FP16"')" 400 'inputs[0].datatype: \"FP16\"'
http_expect $infer "$(sub '"name":"input"' '"name":"pixels"')" 400 'inputs[0].name: \"pixels\"'
http_expect /v2/models/mnist/infer "$good" 404 'model_name \"mnist\": unknown'
http_expect /v2/models/fashion/versions/7/infer "$good" 404 'model_version \"7\" of model \"fashion\": not loaded'
code=$(curl -s -o "$WORK/http.reply" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary "$good" "http://127.0.0.1:$http_port$infer")
[ "$code" = 200 ] && grep -q '"model_version":"1"' "$WORK/http.reply" || fail "good body: HTTP $code"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/v2/health/ready")" = 200 ] ||
  fail "/v2/health/ready is not 200"
# The export records the input normalisation (the training images' mean
# and std, pixel/255: about 0.286 and 0.353); metadata shows it.
curl -s "http://127.0.0.1:$http_port/v2/models/fashion" >"$WORK/metadata.json"
grep -Eq '"normalization_mean":"0\.28[0-9]+"' "$WORK/metadata.json" &&
  grep -Eq '"normalization_std":"0\.35[0-9]+"' "$WORK/metadata.json" ||
  fail "model metadata without the normalisation: $(cat "$WORK/metadata.json")"
echo "HTTP: bad requests named; normalisation in the metadata"

# Reload while a client loop runs: first a damaged file (refused, version
# 1 keeps serving), then the export with new metadata (the same weights, so
# every answer stays right): version 2. No request may fail.
"${CLASSIFY[@]}" --insecure --server="127.0.0.1:$port" --rows=7 --concurrency=8 \
  --repeat=1000 --stop_file="$WORK/stop_loop" >"$WORK/loop.out" 2>"$WORK/loop.err" &
LOOP_PID=$!
PIDS+=($LOOP_PID)
# await_line FILE PATTERN: waits (up to 60 s, while the client loop lives)
# until FILE has a line matching PATTERN.
await_line() {
  local deadline=$((SECONDS + 60))
  until grep -q "$2" "$1"; do
    kill -0 $LOOP_PID 2>/dev/null || { cat "$WORK/loop.err"; fail "the client loop died"; }
    [ $SECONDS -lt $deadline ] || fail "no line '$2' in $1 after 60 s"
    sleep 0.2
  done
}
await_line "$WORK/loop.err" 'pass 1 done'
head -c 1000 "$WORK/short.safetensors" >"$WORK/damaged" && mv "$WORK/damaged" "$WORK/live.safetensors"
await_line "$WORK/serve.log" 'not loaded, still serving version 1'
/usr/bin/python3 - "$WORK/short.safetensors" "$WORK/v2" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n])
header['__metadata__']['step'] += '-v2'
text = json.dumps(header).encode()
text += b' ' * (-len(text) % 8)
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(text)) + text + raw[8 + n:])
PY
mv "$WORK/v2" "$WORK/live.safetensors"
await_line "$WORK/serve.log" 'loaded version 2 from'
passes=$(grep -c 'pass .* done' "$WORK/loop.err")
deadline=$((SECONDS + 60))
until [ "$(grep -c 'pass .* done' "$WORK/loop.err")" -gt "$passes" ]; do
  kill -0 $LOOP_PID 2>/dev/null || break
  [ $SECONDS -lt $deadline ] || fail "no client pass on version 2 after 60 s"
  sleep 0.2
done
touch "$WORK/stop_loop"
wait $LOOP_PID || { cat "$WORK/loop.err"; fail "a request failed during the reload"; }
echo "during the reload: $(tail -2 "$WORK/loop.out" | tr '\n' ' ')"
grep -q "^correct $correct of 10000" "$WORK/loop.out" || fail "wrong answers after the reload"
grep -Eq '^versions 1:[0-9]+ 2:[0-9]+$' "$WORK/loop.out" || fail "not both versions answered: $(tail -1 "$WORK/loop.out")"
curl -s "http://127.0.0.1:$http_port/v2/models/fashion" | grep_all '"versions":\["1","2"\]' ||
  fail "model metadata does not list versions 1 and 2"

# Metrics.
curl -s "http://127.0.0.1:$metrics_port/metrics" >"$WORK/metrics.txt"
for m in 'psd_serve_requests_total{code="OK"}' 'psd_serve_requests_total{code="INVALID_ARGUMENT"} 4' \
  'psd_serve_requests_total{code="NOT_FOUND"} 2' psd_serve_request_duration_seconds_bucket \
  psd_serve_batch_rows_bucket 'psd_serve_queue_length 0' 'psd_serve_model_version 2'; do
  grep -qF "$m" "$WORK/metrics.txt" || fail "no $m in /metrics"
done
if command -v promtool >/dev/null; then
  promtool check metrics <"$WORK/metrics.txt" || fail "promtool rejects psd_serve's metrics"
fi

# A bad request is refused, and the server keeps serving.
if "$BIN/server/serving/oip_classify" --insecure --server="127.0.0.1:$port" \
  --model_name=mnist --limit=10 2>"$WORK/bad.err"; then
  fail "an unknown model was served"
fi
grep -q 'model_name "mnist": unknown' "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "unclear error"; }
"$BIN/server/serving/oip_classify" --insecure --server="127.0.0.1:$port" \
  --model_name=fashion --limit=100 --rows=64 >/dev/null || fail "not serving after a bad request"

# Under mutual TLS: a user's certificate is served; the coordinator's role
# may not call inference (PERMISSION_DENIED).
deploy/make_certs.sh "$WORK/certs" serve user-alice coordinator >/dev/null
tls() { echo "--tls_ca_file=$WORK/certs/ca.pem --tls_cert_file=$WORK/certs/$1.pem --tls_key_file=$WORK/certs/$1.key"; }
"$BIN/server/serving/psd_serve" $(tls serve) --model_file="$WORK/short.safetensors" \
  --model_name=fashion --listen=127.0.0.1:0 --port_file="$WORK/serve_tls.port" \
  --http_listen=127.0.0.1:0 --http_port_file="$WORK/serve_tls.http_port" \
  2>"$WORK/serve_tls.log" &
PIDS+=($!)
tls_port=$(wait_port $! "$WORK/serve_tls.port") || fail "psd_serve (TLS) did not start"
"$BIN/server/serving/oip_classify" $(tls user-alice) --server="127.0.0.1:$tls_port" \
  --model_name=fashion --limit=100 --rows=10 >/dev/null || fail "a user's certificate was not served"
if "$BIN/server/serving/oip_classify" $(tls coordinator) --server="127.0.0.1:$tls_port" \
  --model_name=fashion --limit=10 2>"$WORK/tls_bad.err"; then
  fail "the coordinator's certificate was served"
fi
grep -q 'ModelInfer needs the role worker, user, viewer or admin' "$WORK/tls_bad.err" || { cat "$WORK/tls_bad.err"; fail "unclear TLS refusal"; }
# HTTPS with the same certificates and the same roles.
https_port=$(cat "$WORK/serve_tls.http_port")
"$BIN/server/serving/oip_classify" $(tls user-alice) --http --server="127.0.0.1:$https_port" \
  --model_name=fashion --limit=100 --rows=10 >/dev/null || fail "HTTPS: a user's certificate was not served"
curlt() { curl -s --cacert "$WORK/certs/ca.pem" --cert "$WORK/certs/$1.pem" --key "$WORK/certs/$1.key" \
  -o "$WORK/https.reply" -w '%{http_code}' -H 'Content-Type: application/json' "${@:2}"; }
code=$(curlt user-alice --data-binary @"$WORK/json/request_0.json" "https://127.0.0.1:$https_port$infer")
[ "$code" = 200 ] || fail "HTTPS curl as a user: $code $(cat "$WORK/https.reply")"
code=$(curlt coordinator --data-binary @"$WORK/json/request_0.json" "https://127.0.0.1:$https_port$infer")
[ "$code" = 403 ] && grep -q 'ModelInfer needs the role' "$WORK/https.reply" ||
  fail "HTTPS as the coordinator: $code $(cat "$WORK/https.reply")"
code=$(curl -s --cacert "$WORK/certs/ca.pem" -o "$WORK/https.reply" -w '%{http_code}' \
  -H 'Content-Type: application/json' --data-binary @"$WORK/json/request_0.json" "https://127.0.0.1:$https_port$infer")
[ "$code" = 401 ] || fail "HTTPS without a certificate: $code $(cat "$WORK/https.reply")"
code=$(curl -s --cacert "$WORK/certs/ca.pem" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$https_port/v2/health/ready")
[ "$code" = 200 ] || fail "HTTPS health without a certificate: $code"
if curl -s -o /dev/null "http://127.0.0.1:$https_port/v2/health/live"; then
  fail "plain HTTP answered on the TLS server's port"
fi
echo "mutual TLS: a user's certificate served, the coordinator's refused (gRPC and HTTPS)"

# Graceful shutdown on SIGTERM: exit code 0.
kill -TERM $SERVE_PID
code=0
wait $SERVE_PID || code=$?
[ "$code" = 0 ] || fail "psd_serve exited $code on SIGTERM"
echo "PASS: served accuracy $correct/10000 = the job's $accuracy"
