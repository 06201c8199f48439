#!/usr/bin/env bash
# Multi-host test on network namespaces (issue 8). Six "hosts", each a
# network namespace with one address on a private /24, joined by veth pairs
# to a bridge that lives in a seventh namespace (not in the root one, so no
# address or interface is added to this machine's networks). Each process
# is given its namespace address only (a namespace's loopback is up, since
# traffic to its own address goes through it).
#
#   coordinator, 3 parameter servers, 2 workers: one namespace each, each
#   process binding and advertising its namespace address only; every
#   shard on 2 servers (R=2);
#   job 1 runs, and shard 0's primary's link is cut mid-job: the job fails
#     over (a newer view without that server) and goes on;
#   the link comes back: the server registers again (3 servers in the view);
#   job 1 SUCCEEDS with the checksum of the same job run undisturbed on
#     loopback, and every replica of its shards agrees (psd_ctl replicas);
#   job 2 (short) then trains to SUCCEEDED across the namespaces, on all 3
#     servers.
#
# Every namespace and process is removed on exit, pass or fail. Needs root
# and iproute2's `ip`; skips (exit 0, "SKIP: ...") where they are missing.
set -euo pipefail

skip() {
  echo "SKIP: netns_test: $*"
  exit 0
}
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces (uid $(id -u))"
command -v ip >/dev/null || skip "needs ip (iproute2) on PATH"
command -v python3 >/dev/null || skip "needs python3 (to read psd_ctl's JSON)"

PREFIX=psdnt$$ # every namespace name starts with it
PROBE=$PREFIX-probe
if ! err=$(ip netns add "$PROBE" 2>&1); then
  skip "cannot create a network namespace here: $err"
fi
ip netns del "$PROBE"

source tests/cluster_lib.sh # WORK, PIDS, fail, stop_cluster, write_short_job

# The checksum oracle (DESIGN invariant 4): job 1 run undisturbed on
# loopback (R=1, 2 servers; BSP results do not depend on the servers).
EPOCHS=6
undisturbed_reference $EPOCHS

NAMESPACES=()
cleanup_net() {
  local ns
  for ns in "${NAMESPACES[@]}"; do
    # Deleting the bridge namespace deletes its veth ends, and so their peers.
    ip netns del "$ns" 2>/dev/null || true
  done
  NAMESPACES=()
}
netns_on_exit() {
  local code=$?
  stop_cluster
  cleanup_net
  if [ $code -ne 0 ]; then
    for f in "$WORK"/*.log "$WORK"/*.watch; do
      [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
    done
  fi
  local left
  left=$(ip netns list | grep -c "^$PREFIX-" || true)
  [ "$left" -eq 0 ] || echo "netns_test: $left namespaces left behind" >&2
  exit $code
}
trap netns_on_exit EXIT
trap 'exit 130' INT TERM

# A /24 that no real network here uses: 10.(100..199).(0..249).0/24 from the
# pid. It exists only inside these namespaces, so even a clash would touch
# nothing outside them.
NET=10.$((100 + $$ % 100)).$((($$ / 100) % 250))
BRIDGE=$PREFIX-br
ip netns add "$BRIDGE"
NAMESPACES+=("$BRIDGE")
ip -n "$BRIDGE" link add br0 type bridge
ip -n "$BRIDGE" link set br0 up

# add_host NAME HOST_BYTE: a namespace $PREFIX-NAME whose eth0 has
# $NET.HOST_BYTE/24, its peer v-NAME on the bridge.
add_host() {
  local ns=$PREFIX-$1
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip -n "$BRIDGE" link add "v-$1" type veth peer name eth0 netns "$ns"
  ip -n "$BRIDGE" link set "v-$1" master br0 up
  ip -n "$ns" addr add "$NET.$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
add_host coord 1
add_host s1 11
add_host s2 12
add_host s3 13
add_host w1 21
add_host w2 22
echo "netns_test: hosts on $NET.0/24: $(ip netns list | grep -c "^$PREFIX-") namespaces"

# `ip netns exec` execs its command, so $! is the binary's own pid.
COORDINATOR=$NET.1:7070
ip netns exec "$PREFIX-coord" "$BIN/server/coordinator/psd_coordinator" --insecure --listen="$COORDINATOR" \
  --replication_factor=2 --heartbeat_timeout_ms=2000 --data_dir="$WORK/coord.data" \
  >/dev/null 2>"$WORK/coordinator.log" &
PIDS+=($!)
for i in 1 2 3; do
  ip netns exec "$PREFIX-s$i" "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
    --listen="$NET.1$i:7071" --advertise="$NET.1$i:7071" \
    --data_dir="$WORK/s$i.data" --connect_timeout_ms=30000 \
    >/dev/null 2>"$WORK/server$i.log" &
  PIDS+=($!)
done
for i in 1 2; do
  ip netns exec "$PREFIX-w$i" "$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" \
    --listen="$NET.2$i:7072" --advertise="$NET.2$i:7072" \
    --connect_timeout_ms=30000 >/dev/null 2>"$WORK/worker$i.log" &
  PIDS+=($!)
done

CTL=(ip netns exec "$PREFIX-coord" "$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
"${CTL[@]}" --servers=3 --workers=2 --timeout_s=30 wait-ready >/dev/null ||
  fail "the cluster did not register across the namespaces"

# json_get FILE EXPR: evaluates a Python expression over the JSON in FILE
# (bound to j).
json_get() {
  python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

"${CTL[@]}" view >"$WORK/view1.json"
addresses=$(json_get "$WORK/view1.json" '" ".join(sorted(m["address"] for m in j.get("servers", []) + j.get("workers", [])))')
echo "netns_test: members at $addresses"
for a in $addresses; do
  case "$a" in
  "$NET".*:*) ;;
  *) fail "member address $a is not a namespace address on $NET.0/24" ;;
  esac
done
[ "$(wc -w <<<"$addresses")" -eq 5 ] || fail "expected 5 members, got: $addresses"

# Job 1: the reference's job ($EPOCHS epochs), long enough that it is still
# running when the link is cut.
JOB1=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit job 1"

# Wait until job 1 has taken some steps.
state=""
for _ in $(seq 300); do
  "${CTL[@]}" get "$JOB1" >"$WORK/job1.json" || fail "get $JOB1"
  state=$(json_get "$WORK/job1.json" 'j.get("state", "")')
  step=$(json_get "$WORK/job1.json" 'int(j.get("step", 0))')
  [ "$state" = RUNNING ] && [ "$step" -ge 20 ] && break
  [ "$state" = PENDING ] || [ "$state" = RUNNING ] || fail "job 1 is $state before the cut"
  sleep 0.1
done
[ "$state" = RUNNING ] || fail "job 1 did not start running (state $state)"
epoch=$(json_get "$WORK/job1.json" 'int(j.get("viewEpoch", 0))')

# Cut the link (its veth on the bridge) of shard 0's primary.
CUT_ID=$(json_get "$WORK/job1.json" '[s for s in j["shards"] if s.get("shard", 0) == 0][0]["primary"]')
CUT_ADDRESS=$(json_get "$WORK/job1.json" '[s["address"] for s in j["servers"] if s["id"] == "'"$CUT_ID"'"][0]')
CUT_HOST=""
for i in 1 2 3; do [ "$CUT_ADDRESS" = "$NET.1$i:7071" ] && CUT_HOST=s$i; done
[ -n "$CUT_HOST" ] || fail "shard 0's primary $CUT_ID is at $CUT_ADDRESS, not a server namespace"
echo "netns_test: job $JOB1 at step $step (view epoch $epoch); cutting shard 0's primary $CUT_ID ($CUT_ADDRESS, host $CUT_HOST)"
ip -n "$BRIDGE" link set "v-$CUT_HOST" down

# The job fails over: a newer view in which shard 0 has another primary,
# and the job is still running.
failover=""
for _ in $(seq 300); do
  "${CTL[@]}" get "$JOB1" >"$WORK/job1.json" || fail "get $JOB1 after the cut"
  failover=$(json_get "$WORK/job1.json" 'j.get("state") == "RUNNING" and int(j.get("viewEpoch", 0)) > '"$epoch"' and [s for s in j["shards"] if s.get("shard", 0) == 0][0]["primary"] != "'"$CUT_ID"'"')
  [ "$failover" = True ] && break
  state=$(json_get "$WORK/job1.json" 'j.get("state", "")')
  [ "$state" = RUNNING ] || fail "job 1 is $state after the cut: $(json_get "$WORK/job1.json" 'j.get("error", "")')"
  sleep 0.1
done
[ "$failover" = True ] || fail "job 1 did not fail over from $CUT_ID within 30 s"
echo "netns_test: job $JOB1 failed over to a view without $CUT_ID (step $(json_get "$WORK/job1.json" 'j.get("step", 0)'))"

# Link back: the server's next heartbeat gets NOT_FOUND and it registers
# again.
ip -n "$BRIDGE" link set "v-$CUT_HOST" up
"${CTL[@]}" --servers=3 --workers=2 --timeout_s=30 wait-ready >/dev/null ||
  fail "server $CUT_ADDRESS did not register again after its link came back"
"${CTL[@]}" view >"$WORK/view3.json"
back=$(json_get "$WORK/view3.json" 'sum(1 for s in j["servers"] if s["address"] == "'"$CUT_ADDRESS"'")')
[ "$back" -eq 1 ] || fail "server $CUT_ADDRESS is not in the view again"
echo "netns_test: server $CUT_ADDRESS registered again"

# Job 1 ends with the undisturbed checksum, and its replicas agree.
"${CTL[@]}" watch "$JOB1" >"$WORK/job1.watch" || { tail -5 "$WORK/job1.watch"; fail "job 1 did not succeed after the cut"; }
"${CTL[@]}" export "$JOB1" "$WORK/job1.safetensors" >"$WORK/job1.export" || fail "export job 1"
sum=$(grep -o 'crc32:[0-9a-f]*' "$WORK/job1.export")
[ "$sum" = "$reference" ] || fail "job 1 after the cut: checksum $sum, undisturbed $reference"
"${CTL[@]}" replicas "$JOB1" >"$WORK/job1.replicas" || { cat "$WORK/job1.replicas"; fail "job 1's replicas differ"; }
echo "netns_test: job $JOB1 SUCCEEDED after the cut with the undisturbed checksum $sum; $(tail -1 "$WORK/job1.replicas")"

# Job 2 trains to SUCCEEDED across the namespaces, on all 3 servers.
crc=$(run_job "$WORK/short.textproto" "$WORK/job2.safetensors")
JOB2=$(cat "$WORK/last_job")
"${CTL[@]}" servers >"$WORK/servers.txt" || fail "servers"
holding=$(grep -c "\"$JOB2\"" "$WORK/servers.txt" || true)
[ "$holding" -eq 3 ] || fail "job 2 is held by $holding servers, expected 3"
# Every TCP connection the coordinator has is between namespace addresses
# (IPv4-mapped on its dual-stack socket).
ends=$(ip netns exec "$PREFIX-coord" ss -Htn state established |
  awk '{print $3; print $4}' | sed 's/^\[::ffff:\(.*\)\]/\1/' | sort -u)
[ -n "$ends" ] || fail "the coordinator has no TCP connection"
for e in $ends; do
  case "$e" in
  "$NET".*:*) ;;
  *) fail "the coordinator has a connection end at $e" ;;
  esac
done
echo "netns_test: job $JOB2 SUCCEEDED across the namespaces ($crc)"
echo "PASS"
