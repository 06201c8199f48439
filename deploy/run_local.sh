#!/usr/bin/env bash
# Quick start: builds psd, starts a local cluster on loopback (1 coordinator,
# 3 parameter servers, 2 workers, each its own process; every parameter
# shard on 2 servers, a primary and a backup), trains the job, prints its
# test accuracy, exports the parameters, and shuts everything down (also on
# Ctrl-C). Every process talks mutual TLS, with a throwaway CA and
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
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_local: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

deploy/install_deps.sh
echo "==> building (bazel)"
bazel build --noshow_progress //server/coordinator:psd_coordinator //server/ps:psd_server \
  //worker:psd_worker //deploy:psd_ctl 2>&1 | grep -vE '^(INFO|Target|  bazel-bin)' || true
BIN=bazel-bin
for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker deploy/psd_ctl; do
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
  deploy/make_certs.sh "$CERTS" coordinator worker user-alice admin-root \
    $(seq -f 'server-%g' "$SERVERS")
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
