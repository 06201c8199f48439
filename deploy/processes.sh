# Process helpers shared by deploy/run_local.sh and tests/cluster_lib.sh.
# Source it; it defines functions only.

# stop_processes PID...: SIGTERM, up to 5 s for a graceful exit, then SIGKILL
# for any left, and reap them.
stop_processes() {
  [ $# -eq 0 ] && return 0
  kill -TERM "$@" 2>/dev/null || true
  local alive p
  for _ in $(seq 50); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}

# wait_port PID FILE: prints the port that process PID wrote to FILE; fails
# (status 1, with a message) when the process exits first or after 15 s.
wait_port() {
  for _ in $(seq 300); do
    [ -s "$2" ] && { cat "$2"; return 0; }
    kill -0 "$1" 2>/dev/null || { echo "process $1 exited before writing $2" >&2; return 1; }
    sleep 0.05
  done
  echo "no port in $2 after 15 s" >&2
  return 1
}

# tls_flags DIR NAME: the flags for mutual TLS with the certificate NAME
# (coordinator, server, worker, user-alice, ...) that deploy/make_certs.sh
# made in DIR; with DIR empty, --insecure (plaintext).
tls_flags() {
  if [ -z "$1" ]; then
    echo --insecure
  else
    echo "--tls_ca_file=$1/ca.pem --tls_cert_file=$1/$2.pem --tls_key_file=$1/$2.key"
  fi
}
