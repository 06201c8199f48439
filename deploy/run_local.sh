#!/usr/bin/env bash
# Quick start: builds psd, starts a local cluster on loopback (1 coordinator,
# 3 parameter servers, 2 workers, each its own process; every parameter
# shard on 2 servers, a primary and a backup), trains the job, prints its
# test accuracy, exports the parameters, serves the export with psd_serve
# and classifies a few test images with curl over the Open Inference
# Protocol's HTTP/JSON API (a sparse job's tables are listed instead:
# psd_serve serves MLPs only), and shuts everything down (also on Ctrl-C). Every process talks mutual TLS, with a throwaway CA and
# certificates made at start (deploy/make_certs.sh), unless --insecure.
#
#   deploy/run_local.sh [--job FILE] [--servers N] [--workers N]
#                       [--replication R] [--out FILE] [--insecure]
#                       [--server-flag FLAG]... [--worker-flag FLAG]...
#   (--server-flag/--worker-flag: one more flag for every psd_server or
#   psd_worker, e.g. --worker-flag=--shared_memory=false)
#
# Logs go to a fresh folder under /tmp (printed at the start).
set -euo pipefail
cd "$(dirname "$0")/.."

JOB=deploy/jobs/fashion_mnist_mlp.textproto
SERVERS=3
WORKERS=2
REPLICATION=2
OUT=out/fashion_mnist_mlp.safetensors
SERVER_FLAGS=()
WORKER_FLAGS=()
INSECURE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --server-flag) SERVER_FLAGS+=("$2"); shift 2 ;;
    --server-flag=*) SERVER_FLAGS+=("${1#--server-flag=}"); shift ;;
    --worker-flag) WORKER_FLAGS+=("$2"); shift 2 ;;
    --worker-flag=*) WORKER_FLAGS+=("${1#--worker-flag=}"); shift ;;
    --job) JOB="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --replication) REPLICATION="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_local: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

deploy/install_deps.sh
echo "==> building (bazel)"
bazel build --noshow_progress //server/coordinator:psd_coordinator //server/ps:psd_server \
  //worker:psd_worker //deploy:psd_ctl //server/serving:psd_serve \
  //server/serving:oip_classify 2>&1 | grep -vE '^(INFO|Target|  bazel-bin)' || true
BIN=bazel-bin
for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker deploy/psd_ctl \
  server/serving/psd_serve server/serving/oip_classify; do
  [ -x "$BIN/$b" ] || { echo "run_local: build failed ($BIN/$b missing)" >&2; exit 1; }
done

source deploy/processes.sh
RUN_DIR=$(mktemp -d /tmp/psd-local.XXXXXX)
PIDS=()
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    stop_processes "${PIDS[@]}"
    echo "==> cluster stopped (logs in $RUN_DIR)"
  fi
  exit $code
}
trap cleanup EXIT
trap 'echo; echo "==> interrupted"; exit 130' INT TERM

CERTS=""
if [ "$INSECURE" = 0 ]; then
  CERTS=$RUN_DIR/certs
  # One certificate per server (spiffe://psd/server/server-N): replication
  # is taken only from the identities of a job's view.
  # psd_serve has the serve role (spiffe://psd/serve).
  deploy/make_certs.sh "$CERTS" coordinator worker user-alice admin-root \
    $(seq -f 'server-%g' "$SERVERS") serve
  # A read-only bearer token, for dashboards and grpcurl without a
  # certificate (docs/OPERATIONS.md, "Users and tokens").
  VIEW_TOKEN=$(openssl rand -hex 24)
  (umask 077 && echo "$VIEW_TOKEN view dashboard" >"$CERTS/tokens")
  echo "==> mutual TLS: a throwaway CA and certificates in $CERTS"
else
  echo "==> --insecure: plaintext, any local program can call the cluster"
fi
echo "==> starting 1 coordinator, $SERVERS servers (R=$REPLICATION), $WORKERS workers (logs: $RUN_DIR)"
# metrics_flags NAME: every process serves Prometheus metrics on a free port.
metrics_flags() {
  echo "--metrics_listen=127.0.0.1:0 --metrics_port_file=$RUN_DIR/$1.metrics.port"
}
"$BIN/server/coordinator/psd_coordinator" --port_file="$RUN_DIR/coordinator.port" \
  --replication_factor="$REPLICATION" $(metrics_flags coordinator) \
  $(tls_flags "$CERTS" coordinator) ${CERTS:+--auth_tokens_file=$CERTS/tokens} \
  2>"$RUN_DIR/coordinator.log" &
PIDS+=($!)
COORDINATOR=127.0.0.1:$(wait_port $! "$RUN_DIR/coordinator.port" ||
  { tail -5 "$RUN_DIR/coordinator.log" >&2; exit 1; })
for i in $(seq "$SERVERS"); do
  "$BIN/server/ps/psd_server" --coordinator="$COORDINATOR" $(metrics_flags server$i) \
    $(tls_flags "$CERTS" "server-$i") \
    ${SERVER_FLAGS[@]+"${SERVER_FLAGS[@]}"} 2>"$RUN_DIR/server$i.log" &
  PIDS+=($!)
done
for i in $(seq "$WORKERS"); do
  "$BIN/worker/psd_worker" --coordinator="$COORDINATOR" $(metrics_flags worker$i) \
    $(tls_flags "$CERTS" worker) \
    ${WORKER_FLAGS[@]+"${WORKER_FLAGS[@]}"} 2>"$RUN_DIR/worker$i.log" &
  PIDS+=($!)
done
CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "$CERTS" user-alice))
"${CTL[@]}" --servers="$SERVERS" --workers="$WORKERS" --timeout_s=30 wait-ready
scheme=https
[ -n "$CERTS" ] || scheme=http
echo "==> Prometheus metrics: $(for f in "$RUN_DIR"/*.metrics.port; do
  printf '%s %s://127.0.0.1:%s/metrics  ' "$(basename "$f" .metrics.port)" "$scheme" "$(cat "$f")"; done)"

JOB_ID=$("${CTL[@]}" submit "$JOB")
echo "==> submitted $JOB as job $JOB_ID (coordinator $COORDINATOR)"
if [ -n "$CERTS" ]; then
  echo "==> grpcurl, as user alice: grpcurl -cacert $CERTS/ca.pem -cert $CERTS/user-alice.pem" \
    "-key $CERTS/user-alice.key -d '{\"job_id\":\"$JOB_ID\"}' $COORDINATOR psd.v1.JobService/GetJob"
  echo "==> grpcurl, with the read-only token: grpcurl -cacert $CERTS/ca.pem" \
    "-H 'authorization: Bearer $VIEW_TOKEN' -d '{\"job_id\":\"$JOB_ID\"}' $COORDINATOR psd.v1.JobService/GetJob"
else
  echo "==> grpcurl: grpcurl -plaintext -d '{\"job_id\":\"$JOB_ID\"}' $COORDINATOR psd.v1.JobService/GetJob"
fi
"${CTL[@]}" watch "$JOB_ID"
mkdir -p "$(dirname "$OUT")"
"${CTL[@]}" export "$JOB_ID" "$OUT"
if grep -qE '^ *kind: *(SPARSE_LR|DLRM)' "$JOB"; then
  # A sparse job (issue 25): its tables, per table rows, bytes, checksum.
  # psd_serve serves MLPs only: nothing to serve.
  "${CTL[@]}" tables "$JOB_ID"
  exit 0
fi

# Serve what it trained: psd_serve on the export (the same TLS as the
# cluster), a few test images classified with curl over the OIP HTTP/JSON
# API, then psd_serve stopped.
echo "==> serving $OUT with psd_serve (OIP gRPC and HTTP/JSON)"
"$BIN/server/serving/psd_serve" --model_file="$OUT" --model_name=fashion \
  --listen=127.0.0.1:0 --port_file="$RUN_DIR/serve.port" \
  --http_listen=127.0.0.1:0 --http_port_file="$RUN_DIR/serve.http_port" \
  $(tls_flags "$CERTS" serve) 2>"$RUN_DIR/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
wait_port $SERVE_PID "$RUN_DIR/serve.port" >/dev/null || { tail -5 "$RUN_DIR/serve.log" >&2; exit 1; }
HTTP_PORT=$(cat "$RUN_DIR/serve.http_port")
# 8 test images, normalised as the trainer does, as one OIP JSON body.
mkdir -p "$RUN_DIR/requests"
"$BIN/server/serving/oip_classify" --model_name=fashion --write_json="$RUN_DIR/requests" \
  --limit=8 --rows=8
CURL=(curl -sS -H 'Content-Type: application/json')
[ -z "$CERTS" ] || CURL+=(--cacert "$CERTS/ca.pem" --cert "$CERTS/user-alice.pem" --key "$CERTS/user-alice.key")
URL=$scheme://127.0.0.1:$HTTP_PORT/v2/models/fashion/infer
echo "==> $(printf '%q ' "${CURL[@]}")--data-binary @$RUN_DIR/requests/request_0.json $URL"
REPLY=$("${CURL[@]}" --data-binary @"$RUN_DIR/requests/request_0.json" "$URL")
# The reply's one output is "class": {"data": [c0, c1, ...], ...}.
PREDICTED=$(echo "$REPLY" | grep -o '"data":\[[0-9,]*\]' | tr -dc '0-9,' | tr ',' ' ')
[ -n "$PREDICTED" ] || { echo "run_local: unexpected reply: $REPLY" >&2; exit 1; }
NAMES=("T-shirt/top" Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag "Ankle boot")
i=0
for p in $PREDICTED; do
  t=$(sed -n "$((i + 1))p" "$RUN_DIR/requests/labels")
  printf '    test image %d: predicted %-11s true %s\n' "$i" "${NAMES[$p]}" "${NAMES[$t]}"
  i=$((i + 1))
done
kill -TERM $SERVE_PID
wait $SERVE_PID || true
echo "==> psd_serve stopped"
