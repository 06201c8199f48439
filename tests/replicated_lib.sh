# Shared by the tests of replicated jobs (source it after cluster_lib.sh):
# a coordinator with a replication factor, servers and workers started one
# by one and known by NAME (their pids and ports), queries of a job's view
# through psd_ctl, bounded waits on observable state, and the checksum
# oracle of DESIGN invariant 4 (finish). Set `reference` (a checksum
# "crc32:...", e.g. by cluster_lib.sh's undisturbed_reference) before
# calling finish. TLS_DIR works as in cluster_lib.sh's start_cluster.
declare -A SERVER_PID SERVER_PORT
NEXT_SERVER=1

# start_server NAME [ARGS...]: one psd_server (with ARGS); records its pid
# and port by NAME.
start_server() {
  local name=$1
  shift
  rm -f "$WORK/$name.port"
  "$BIN/server/ps/psd_server" --coordinator="$COORDINATOR" \
    --port_file="$WORK/$name.port" $(tls_flags "${TLS_DIR:-}" server) "$@" \
    2>>"$WORK/$name.log" &
  PIDS+=($!)
  SERVER_PID[$name]=$!
  SERVER_PORT[$name]=$(wait_port $! "$WORK/$name.port") || fail "server $name did not start"
}

# start_worker NAME [ARGS...]: one psd_worker (with ARGS).
start_worker() {
  local name=$1
  shift
  "$BIN/worker/psd_worker" --coordinator="$COORDINATOR" \
    $(tls_flags "${TLS_DIR:-}" worker) "$@" 2>>"$WORK/$name.log" &
  PIDS+=($!)
  WORKER_PID[$name]=$!
}
declare -A WORKER_PID

# start_replicated NAME SERVERS WORKERS R [COORDINATOR_ARGS...]; with
# SERVER_DATA=1 each server NAME.sI gets --data_dir=$WORK/NAME.sI.data.
start_replicated() {
  local name=$1 servers=$2 workers=$3 r=$4
  shift 4
  "$BIN/server/coordinator/psd_coordinator" --port_file="$WORK/$name.coordinator.port" \
    --replication_factor="$r" $(tls_flags "${TLS_DIR:-}" coordinator) "$@" \
    2>"$WORK/$name.coordinator.log" &
  PIDS+=($!)
  COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/$name.coordinator.port") ||
    fail "coordinator $name did not start"
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR"
    $(tls_flags "${TLS_DIR:-}" user-alice))
  for i in $(seq "$servers"); do
    if [ "${SERVER_DATA:-0}" = 1 ]; then
      start_server "$name.s$i" --data_dir="$WORK/$name.s$i.data"
    else
      start_server "$name.s$i"
    fi
  done
  for i in $(seq "$workers"); do start_worker "$name.w$i"; done
  "${CTL[@]}" --servers="$servers" --workers="$workers" --timeout_s=30 wait-ready ||
    fail "cluster $name: not ready in 30 s"
}

# q JOB PYTHON_EXPR: evaluates the expression over the job's status `j`.
# A GetJob that fails (a loaded machine: the call's deadline) is tried
# again for up to 10 s before q fails, printing the error.
q() {
  local tries=0
  until "${CTL[@]}" get "$1" >"$WORK/q.json" 2>"$WORK/q.err"; do
    tries=$((tries + 1))
    [ $tries -lt 50 ] || { cat "$WORK/q.err" >&2; return 1; }
    sleep 0.2
  done
  python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
addr = {s["id"]: s["address"] for s in j.get("servers", [])}
shards = {s.get("shard", 0): s for s in j.get("shards", [])}
def port(i): return addr.get(i, ":").rsplit(":", 1)[1]
print(eval(sys.argv[2]))' "$WORK/q.json" "$2"
}

# name_of_port PORT: the NAME of the server listening there.
name_of_port() {
  local n
  for n in "${!SERVER_PORT[@]}"; do
    [ "${SERVER_PORT[$n]}" = "$1" ] && { echo "$n"; return 0; }
  done
  return 1
}

# These fail the test, saying why, rather than exiting through set -e.
primary_of() {
  local port
  port=$(q "$1" "port(shards[$2]['primary'])") || fail "job $1: no status"
  name_of_port "$port" || fail "job $1: shard $2's primary (port '$port') is none of the servers"
}
backup_of() {
  local port
  port=$(q "$1" "port(shards[$2]['backups'][0])") || fail "job $1: no status"
  name_of_port "$port" || fail "job $1: shard $2's backup (port '$port') is none of the servers"
}
epoch_of() { q "$1" 'int(j.get("viewEpoch", 0))' || fail "job $1: no status"; }

# wait_until JOB EXPR WHAT: polls up to 60 s for EXPR to print True.
wait_until() {
  local give_up=$((SECONDS + 60))
  while [ $SECONDS -lt $give_up ]; do
    [ "$(q "$1" "$2" 2>/dev/null)" = True ] && return 0
    sleep 0.1
  done
  q "$1" 'j' >&2 || true
  fail "$3"
}

wait_step() { wait_until "$1" "int(j.get('step', 0)) >= $2" "job $1 did not reach step $2"; }

# finish JOB LABEL: waits for SUCCEEDED, checks the checksum against the
# reference and that every replica agrees.
finish() {
  "${CTL[@]}" watch "$1" >"$WORK/$1.watch" || { tail -5 "$WORK/$1.watch"; fail "$2: job $1 did not succeed"; }
  "${CTL[@]}" export "$1" "$WORK/$1.safetensors" >"$WORK/$1.export" || fail "$2: export $1"
  local sum
  sum=$(grep -o 'crc32:[0-9a-f]*' "$WORK/$1.export")
  [ "$sum" = "$reference" ] || fail "$2: checksum $sum, undisturbed $reference"
  "${CTL[@]}" replicas "$1" >"$WORK/$1.replicas" || { cat "$WORK/$1.replicas"; fail "$2: replicas differ"; }
  echo "$2: $sum, $(tail -1 "$WORK/$1.replicas")"
}

# submit: submits the job and waits until it runs (its view is known), or
# has already SUCCEEDED (a short job on a fast machine can end between two
# polls).
# hit_primary JOB SIGNAL: once the job has done 20 steps, sends SIGNAL to
# shard 0's primary; sets VICTIM (its name) and EPOCH (the view before).
hit_primary() {
  VICTIM=$(primary_of "$1" 0)
  EPOCH=$(epoch_of "$1")
  wait_step "$1" 20
  kill -"$2" "${SERVER_PID[$VICTIM]}"
}

# failed_over JOB LABEL [CONDITION]: waits for a newer view in which shard 0
# has another primary (and CONDITION, a Python expression, holds).
failed_over() {
  wait_until "$1" "int(j['viewEpoch']) > $EPOCH and port(shards[0]['primary']) != '${SERVER_PORT[$VICTIM]}'${3:+ and $3}" \
    "$2: no failover of shard 0${3:+ with $3}"
}

submit() {
  local id
  id=$("${CTL[@]}" submit "${1:-$WORK/job.textproto}") || fail "submit"
  wait_until "$id" "(j.get('state') == 'RUNNING' and len(j.get('shards', [])) > 0) or j.get('state') == 'SUCCEEDED'" "job $id did not start" >&2
  echo "$id"
}

