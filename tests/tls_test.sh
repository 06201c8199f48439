#!/usr/bin/env bash
# Mutual TLS and per-call roles (issue 15), with real processes and
# certificates made by deploy/make_certs.sh:
#  - the short job under mutual TLS ends with the same checksum as in
#    plaintext;
#  - a plaintext call, a call without a client certificate, a certificate
#    from another CA and an expired one are refused;
#  - a worker's certificate cannot call JobService, nor a server's
#    Replicate (PERMISSION_DENIED naming the role needed); a user's can;
#  - health checks need no certificate (probes); metrics are HTTPS;
#  - `psd_ctl health` (the Kubernetes exec probe, deploy/k8s) reports
#    SERVING over TLS for the coordinator, a server and a worker, each with
#    its own certificate, and fails clearly against a dead port, a plaintext
#    probe and a certificate from another CA;
#  - a renewed certificate file is served without a restart.
# The grpcurl-style calls use `buf curl` (PSD_BUF, set by tests/run_tests.sh).
source tests/cluster_lib.sh

CERTS=$WORK/certs
deploy/make_certs.sh "$CERTS"
deploy/make_certs.sh --days -1 "$CERTS" user-expired
deploy/make_certs.sh "$WORK/other-ca" user-alice worker

write_short_job "$WORK/short.textproto"
start_cluster plain 2 2
plain=$(run_job "$WORK/short.textproto" "$WORK/plain.safetensors")
stop_cluster
echo "plaintext: $plain"

TLS_DIR=$CERTS
COORDINATOR_ARGS=(--tls_refresh_s=1 --metrics_listen=127.0.0.1:0
  --metrics_port_file="$WORK/coordinator.metrics.port")
start_cluster tls 2 2
tls=$(run_job "$WORK/short.textproto" "$WORK/tls.safetensors")
echo "mutual TLS: $tls"
[ "$tls" = "$plain" ] || fail "the checksum under TLS ($tls) differs from plaintext ($plain)"
grep -q "mutual TLS: certificate" "$WORK/tls.server1.log" || fail "server1 did not log TLS"

# psd_serve --job under mutual TLS, with the serve role (spiffe://psd/serve):
# it reads the finished job from the coordinator and the servers, and a
# user's client gets the same classes as from a psd_serve of the export.
SERVE=("$BIN/server/serving/psd_serve" --model_name=fashion --listen=127.0.0.1:0)
"${SERVE[@]}" $(tls_flags "$CERTS" serve) --coordinator="$COORDINATOR" \
  --job="$(cat "$WORK/last_job")" --port_file="$WORK/serve_job.port" 2>"$WORK/serve_job.log" &
PIDS+=($!)
job_port=$(wait_port $! "$WORK/serve_job.port") || { cat "$WORK/serve_job.log"; fail "psd_serve --job under TLS did not start"; }
"${SERVE[@]}" $(tls_flags "$CERTS" serve) --model_file="$WORK/tls.safetensors" \
  --port_file="$WORK/serve_file.port" 2>"$WORK/serve_file.log" &
PIDS+=($!)
file_port=$(wait_port $! "$WORK/serve_file.port") || fail "psd_serve of the export under TLS did not start"
for port in $job_port $file_port; do
  "$BIN/server/serving/oip_classify" $(tls_flags "$CERTS" user-alice) --model_name=fashion \
    --server="127.0.0.1:$port" --limit=500 --print_classes >"$WORK/classes.$port" ||
    fail "oip_classify as a user against psd_serve on port $port"
done
[ "$(grep -c ^image "$WORK/classes.$job_port")" = 500 ] || fail "psd_serve --job: not 500 classes"
cmp -s <(grep ^image "$WORK/classes.$job_port") <(grep ^image "$WORK/classes.$file_port") ||
  fail "psd_serve --job under TLS classifies differently from the export"
# A worker's certificate may pull but not read the job: refused, naming it.
if "${SERVE[@]}" $(tls_flags "$CERTS" worker) --coordinator="$COORDINATOR" \
  --job="$(cat "$WORK/last_job")" 2>"$WORK/serve_worker.log"; then
  fail "psd_serve --job ran with a worker's certificate"
fi
grep -q "GetJob needs the role" "$WORK/serve_worker.log" || { cat "$WORK/serve_worker.log"; fail "unclear refusal of a worker's psd_serve"; }
echo "psd_serve --job under mutual TLS (serve role): 500 classes equal to the export's"

# The metrics endpoint serves HTTPS with the coordinator's certificate.
metrics_port=$(cat "$WORK/coordinator.metrics.port")
python3 - "$CERTS/ca.pem" "$metrics_port" <<'PY' || fail "metrics over HTTPS"
import ssl, sys, urllib.request
ca, port = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=ca)
body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read().decode()
assert "psd_coordinator_" in body, body[:300]
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
except Exception:
    pass
else:
    sys.exit("the metrics endpoint answered plain HTTP")
print("metrics: HTTPS only")
PY

# ctl CERT_NAME [DIR] ARGS...: psd_ctl with another identity.
ctl_as() {
  local dir=$1 name=$2
  shift 2
  "$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" --timeout_s=5 \
    --tls_ca_file="$CERTS/ca.pem" --tls_cert_file="$dir/$name.pem" \
    --tls_key_file="$dir/$name.key" "$@" 2>&1
}
out=$(ctl_as "$CERTS" user-alice list) || fail "user alice cannot list: $out"
echo "$out" | grep_all '"name": "short"' || fail "list as alice: $out"
out=$(ctl_as "$CERTS" worker list) && fail "a worker certificate listed jobs: $out"
echo "$out" | grep_all "PERMISSION_DENIED.*needs the role user, viewer, admin or serve" ||
  fail "list as a worker: $out"
for bad in "$WORK/other-ca user-alice" "$CERTS user-expired"; do
  out=$(ctl_as $bad list) && fail "$bad was accepted: $out"
  echo "$out" | grep_all "UNAVAILABLE" || fail "$bad: $out"
done
out=$("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" --timeout_s=5 --insecure list 2>&1) &&
  fail "a plaintext call was answered: $out"
echo "refused: a worker certificate, another CA's, an expired one, plaintext"

# psd_ctl health, as deploy/k8s's exec probes run it: each process's own
# certificate, 127.0.0.1 and the port (no host name in the certificates).
# health_as NAME ADDRESS [DIR]: the check with certificate NAME from DIR.
health_as() {
  local dir=${3:-$CERTS}
  "$BIN/deploy/psd_ctl" --timeout_s=5 --tls_ca_file="$dir/ca.pem" \
    --tls_cert_file="$dir/$1.pem" --tls_key_file="$dir/$1.key" health "$2" 2>&1
}
read -r server_addr worker_addr < <("${CTL[@]}" view | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(v["servers"][0]["address"], v["workers"][0]["address"])')
for probe in "coordinator $COORDINATOR coordinator" \
  "server 127.0.0.1:${server_addr##*:} server" "worker 127.0.0.1:${worker_addr##*:} worker"; do
  set -- $probe
  out=$(health_as "$1" "$2") || fail "psd_ctl health of the $1 at $2: $out"
  [ "$out" = "$2: SERVING (spiffe://psd/$3)" ] || fail "psd_ctl health of the $1: $out"
done
dead=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(health_as worker "$dead") && fail "psd_ctl health of a dead port succeeded: $out"
echo "$out" | grep_all "^psd_ctl: health $dead: UNAVAILABLE" || fail "health of a dead port: $out"
out=$("$BIN/deploy/psd_ctl" --timeout_s=5 health "$COORDINATOR" 2>&1) &&
  fail "a plaintext health check of a TLS port succeeded: $out"
echo "$out" | grep_all "UNAVAILABLE" || fail "plaintext health: $out"
out=$(health_as worker "$COORDINATOR" "$WORK/other-ca") &&
  fail "health with another CA's certificate succeeded: $out"
echo "$out" | grep_all "UNAVAILABLE.*certificate verify failed" || fail "health, other CA: $out"
echo "psd_ctl health: SERVING for coordinator, server and worker over TLS; fails on a dead port, plaintext, another CA"

if [ -z "${PSD_BUF:-}" ] || [ ! -x "$PSD_BUF" ]; then
  echo "SKIP (the rest): buf not available (PSD_BUF unset); tests/run_tests.sh installs it"
  exit 0
fi
export BUF_CACHE_DIR="$WORK/buf-cache"
# curl_as NAME|- ADDRESS METHOD JSON: a call over TLS as certificate NAME
# (- : no client certificate).
curl_as() {
  local who=(--cacert "$CERTS/ca.pem")
  [ "$1" = - ] || who+=(--cert "$CERTS/$1.pem" --key "$CERTS/$1.key")
  "$PSD_BUF" curl --protocol grpc "${who[@]}" -d "$4" \
    "https://$2/$3" 2>&1
}
server=$("${CTL[@]}" view | python3 -c '
import json, sys
print(json.load(sys.stdin)["servers"][0]["address"])')
out=$(curl_as - "$server" grpc.health.v1.Health/Check '{}') || fail "health without a certificate: $out"
echo "$out" | grep_all SERVING || fail "health: $out"
out=$(curl_as - "$COORDINATOR" psd.v1.JobService/ListJobs '{}') && fail "anonymous ListJobs: $out"
echo "$out" | grep_all -i "unauthenticated" || fail "anonymous ListJobs: $out"
out=$(curl_as worker "$server" psd.v1.ParameterServer/Replicate '{"jobId":"short-1"}') &&
  fail "a worker called Replicate: $out"
echo "$out" | grep_all -i "permission_denied" || fail "Replicate as a worker: $out"
echo "$out" | grep_all "needs the role server" || fail "Replicate as a worker: $out"
out=$(curl_as user-alice "$server" psd.v1.ParameterServer/DropJob '{"jobId":"short-1"}') &&
  fail "a user dropped a job on a server: $out"
echo "$out" | grep_all "needs the role coordinator" || fail "DropJob as a user: $out"
out=$(curl_as user-alice "$COORDINATOR" psd.v1.JobService/ListJobs '{}') || fail "ListJobs as alice: $out"
echo "refused: anonymous ListJobs, a worker's Replicate, a user's DropJob; health open"

# Rotation: a new coordinator certificate (same CA) replaces the files; the
# coordinator (--tls_refresh_s=1) serves it to new connections.
serial() {
  openssl s_client -connect "$COORDINATOR" -CAfile "$CERTS/ca.pem" \
    -cert "$CERTS/user-alice.pem" -key "$CERTS/user-alice.key" -alpn h2 </dev/null 2>/dev/null |
    openssl x509 -noout -serial
}
before=$(serial)
mkdir "$WORK/renewed"
cp "$CERTS/ca.pem" "$CERTS/ca.key" "$WORK/renewed/"
deploy/make_certs.sh "$WORK/renewed" coordinator
renewed=$(openssl x509 -noout -serial -in "$WORK/renewed/coordinator.pem")
[ "$renewed" != "$before" ] || fail "the renewed certificate has the old serial"
cp "$WORK/renewed/coordinator.key" "$CERTS/coordinator.key.new"
cp "$WORK/renewed/coordinator.pem" "$CERTS/coordinator.pem.new"
mv "$CERTS/coordinator.key.new" "$CERTS/coordinator.key"
mv "$CERTS/coordinator.pem.new" "$CERTS/coordinator.pem"
for _ in $(seq 100); do
  [ "$(serial)" = "$renewed" ] && break
  sleep 0.1
done
[ "$(serial)" = "$renewed" ] || fail "the coordinator still serves $(serial), not the renewed $renewed"
out=$(ctl_as "$CERTS" user-alice list) || fail "list after the renewal: $out"
echo "rotation: $before -> $renewed, served without a restart"
echo "PASS"
