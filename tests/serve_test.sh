#!/usr/bin/env bash
# psd_serve end to end (issue 17, first slice): a real cluster trains the
# short job, evaluated on all 10,000 Fashion-MNIST test images; `psd_ctl
# export` writes it; psd_serve serves the export over the Open Inference
# Protocol (gRPC, --insecure); oip_classify sends every test image, 7 rows a
# request from 8 threads (so the dynamic batcher mixes requests), and the
# accuracy it counts must be exactly the one the job reported (same
# normalisation, same forward pass, batch-independent logits). Then
# psd_serve shuts down cleanly on SIGTERM.
source tests/cluster_lib.sh

write_short_job "$WORK/short.textproto"
sed -i 's/ test_limit: 2000//' "$WORK/short.textproto"
grep -q 'test_limit' "$WORK/short.textproto" && fail "sed did not drop test_limit"
start_cluster a 2 2
checksum=$(run_job "$WORK/short.textproto" "$WORK/short.safetensors")
job=$(cat "$WORK/last_job")
status=$("${CTL[@]}" get "$job")
echo "$status" | grep -q '"state": "SUCCEEDED"' || fail "job not SUCCEEDED: $status"
# The job's own accuracy (the first testAccuracy: the job's, before the
# per-epoch history), after the last epoch, over all 10,000 test images.
accuracy=$(echo "$status" | grep -o '"testAccuracy": [0-9.e-]*' | head -1 | awk '{print $2}')
echo "job $job ($checksum): test accuracy $accuracy"
[ -n "$accuracy" ] || fail "no testAccuracy in: $status"
stop_cluster  # the CPUs, for the serving part

"$BIN/server/serving/psd_serve" --insecure --model_file="$WORK/short.safetensors" \
  --model_name=fashion --listen=127.0.0.1:0 --port_file="$WORK/serve.port" \
  --max_batch_size=64 --max_queue_delay_microseconds=2000 2>"$WORK/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
port=$(wait_port $SERVE_PID "$WORK/serve.port") || fail "psd_serve did not start"
grep -q "serving model fashion (MLP \[784,256,128,10\]" "$WORK/serve.log" ||
  fail "psd_serve did not log the model it serves"

result=$("$BIN/server/serving/oip_classify" --insecure --server="127.0.0.1:$port" \
  --model_name=fashion --rows=7 --concurrency=8) || fail "oip_classify failed"
echo "served: $result"
correct=$(echo "$result" | awk '{print $2}')
total=$(echo "$result" | awk '{print $4}')
[ "$total" = 10000 ] || fail "classified $total images, want 10000"
# Exactly: the job's float accuracy is correct/10000 rounded to float, so
# the counts must agree to well under one image.
awk -v a="$accuracy" -v c="$correct" 'BEGIN { d = a * 10000 - c; exit !(d < 0.01 && d > -0.01) }' ||
  fail "served accuracy $correct/10000 differs from the job's $accuracy"

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
deploy/make_certs.sh "$WORK/certs" server user-alice coordinator >/dev/null
tls() { echo "--tls_ca_file=$WORK/certs/ca.pem --tls_cert_file=$WORK/certs/$1.pem --tls_key_file=$WORK/certs/$1.key"; }
"$BIN/server/serving/psd_serve" $(tls server) --model_file="$WORK/short.safetensors" \
  --model_name=fashion --listen=127.0.0.1:0 --port_file="$WORK/serve_tls.port" \
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
echo "mutual TLS: a user's certificate served, the coordinator's refused"

# Graceful shutdown on SIGTERM: exit code 0.
kill -TERM $SERVE_PID
code=0
wait $SERVE_PID || code=$?
[ "$code" = 0 ] || fail "psd_serve exited $code on SIGTERM"
echo "PASS: served accuracy $correct/10000 = the job's $accuracy"
