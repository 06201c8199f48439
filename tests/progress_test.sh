#!/usr/bin/env bash
# Progress, not only liveness (issue 23 item 5). A member that registers as
# a worker and heartbeats but never pulls or pushes (tests/hung_worker)
# takes a rank of a BSP job, which would wait at step 0 forever. With the
# progress bound set small (--progress_floor_ms=3000), the coordinator
# replaces that rank like a dead one; an idle real worker takes it; the job
# ends with the checksum of the same job run undisturbed, and its status
# names the stalled rank. The hung worker is never given the rank again.
source tests/cluster_lib.sh

undisturbed_reference 2

# One real worker and the hung one: the job (2 workers) takes both.
COORDINATOR_ARGS=(--progress_floor_ms=3000)
start_cluster hung 2 1
"$BIN/tests/hung_worker" --coordinator="$COORDINATOR" >"$WORK/hung.out" 2>&1 &
PIDS+=($!)
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
give_up=$((SECONDS + 60))
until grep -q "given job" "$WORK/hung.out"; do
  [ $SECONDS -lt $give_up ] || fail "the hung worker was never given a rank"
  sleep 0.1
done
# A second real worker, idle: the one to take the stalled rank.
"$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" 2>"$WORK/hung.worker2.log" &
PIDS+=($!)
timeout 120 "${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "job $id did not succeed with a hung worker"; }
"${CTL[@]}" export "$id" "$WORK/hung.safetensors" >"$WORK/$id.export" || fail "export"
sum=$(grep -o 'crc32:[0-9a-f]*' "$WORK/$id.export")
[ "$sum" = "$reference" ] || fail "checksum $sum, undisturbed $reference"
"${CTL[@]}" get "$id" >"$WORK/$id.json" || fail "get"
grep -q 'made no progress for' "$WORK/$id.json" || { cat "$WORK/$id.json"; fail "the job status does not name the stalled rank"; }
[ "$(grep -c 'given job' "$WORK/hung.out")" = 1 ] || fail "the hung worker got a rank again"
echo "progress_test: $(grep -o 'rank [0-9]* ([^)]*) made no progress for [0-9]* ms[^"]*' "$WORK/$id.json" | head -1); job succeeded ($sum)"
