#!/usr/bin/env bash
# Elastic jobs (issue 16), real processes on loopback: a job with
# min_workers 1 and max_workers 4 (4 ranks) starts on 2 workers, grows to 4
# as 2 more register, loses one to SIGKILL and two to SIGTERM (preemption),
# and finishes on 1, each change at a step the test waits for (a membership
# schedule scripted by step). Checks:
#   - every example of every epoch is trained exactly once (the workers'
#     --sample_log; a rank of the killed worker may redo the one step it was
#     pushing when it died, which the servers take once);
#   - the SIGTERMed workers finish their step, hand their ranks back and
#     exit 0, and the job goes on without a replacement;
#   - GetJob shows the membership epoch, the workers and the history of
#     joins, leaves and the death;
#   - the parameters are bitwise those of the same job run undisturbed on
#     one worker (a rank's gradients do not depend on which worker holds it);
#   - below min_workers a job pauses, saying so, and goes on when a worker
#     comes;
#   - bad sizes are refused naming the field.
source tests/cluster_lib.sh

cat >"$WORK/elastic.textproto" <<'JOB'
name: "elastic"
model { kind: MLP input_dim: 784 hidden_sizes: [64] num_classes: 10 init_seed: 3 }
dataset { name: "fashion-mnist" train_limit: 4800 test_limit: 1000 }
optimizer { kind: SGD learning_rate: 0.05 momentum: 0.9 }
consistency: BSP
batch_size: 30
epochs: 6
min_workers: 1
max_workers: 4
seed: 7
JOB
# 4800 examples / 4 ranks / 30 = 40 steps per epoch, 240 steps.
TOTAL=240

# job_field ID PYTHON_EXPR: prints the expression over the status `s`, its
# `step` (an int) and `workers` (a list).
job_field() {
  "${CTL[@]}" get "$1" | python3 -c "import json,sys
s = json.load(sys.stdin)
step, workers = int(s.get('step', 0)), s.get('workers', [])
print($2)"
}
# wait_until ID PYTHON_CONDITION WHAT: polls the job's status (up to 120 s).
wait_until() {
  local i
  for i in $(seq 600); do
    [ "$(job_field "$1" "bool($2)")" = True ] && return 0
    # PENDING: not started yet, and nothing: a GetJob that failed (both on
    # a loaded machine); an ended job never gets there.
    case $(job_field "$1" "s['state']" 2>/dev/null) in
      RUNNING | PENDING | "") ;;
      *) fail "job $1 ended before: $3" ;;
    esac
    sleep 0.2
  done
  fail "job $1: no $3 within 120 s: $("${CTL[@]}" get "$1")"
}
start_worker() {  # start_worker NAME [FLAGS...]: sets WPID
  local name=$1
  shift
  "$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" "$@" \
    2>"$WORK/$name.log" &
  WPID=$!
  PIDS+=($WPID)
}

# Bad sizes: refused, naming the field, and nothing is queued.
start_cluster bad 1 0
for sizes in "min_workers: 3 max_workers: 2" "min_workers: 0 max_workers: 2" \
  "workers: 3 min_workers: 1 max_workers: 4"; do
  sed '/^min_workers/d; /^max_workers/d' "$WORK/elastic.textproto" >"$WORK/bad.textproto"
  echo "$sizes" >>"$WORK/bad.textproto"
  if "${CTL[@]}" submit "$WORK/bad.textproto" 2>"$WORK/bad.err"; then
    fail "accepted $sizes"
  fi
  field=${sizes%%:*}
  [ "$sizes" = "min_workers: 0 max_workers: 2" ] && field=min_workers
  [ "$sizes" = "min_workers: 3 max_workers: 2" ] && field=max_workers
  grep -q "INVALID_ARGUMENT.*$field:" "$WORK/bad.err" ||
    fail "$sizes: want INVALID_ARGUMENT naming $field, got $(cat "$WORK/bad.err")"
  echo "refused ($sizes): $(cat "$WORK/bad.err")"
done
[ "$("${CTL[@]}" list | grep -c jobId || true)" = 0 ] || fail "a refused job was queued"
stop_cluster

# The reference: the same job undisturbed, one worker holding all 4 ranks.
start_cluster ref 2 1
reference=$(run_job "$WORK/elastic.textproto" "$WORK/ref.safetensors")
echo "undisturbed, 1 worker: $reference"
stop_cluster

# 2 -> 4 -> 3 (SIGKILL) -> 1 (SIGTERM x2). The workers sleep 40 ms a step so
# that the job lasts long enough for the schedule.
start_cluster e 2 0
SLOW=(--test_slow_ms_per_step=40)
WPIDS=()
for i in 1 2; do
  start_worker "e.w$i" "${SLOW[@]}" --sample_log="$WORK/samples.w$i"
  WPIDS+=($WPID)
done
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
id=$("${CTL[@]}" submit "$WORK/elastic.textproto")
wait_until "$id" "step >= 20 and len(workers) == 2" "2 workers at step 20"
for i in 3 4; do
  start_worker "e.w$i" "${SLOW[@]}" --sample_log="$WORK/samples.w$i"
  WPIDS+=($WPID)
done
# Four workers, one rank each.
wait_until "$id" "len(workers) == 4 and all(len(w.get('ranks', [])) == 1 for w in workers)" \
  "4 workers with a rank each"
at=$(job_field "$id" "step")
wait_until "$id" "step >= $at + 20" "20 steps on 4 workers"
echo "grew to 4 workers by step $at"
kill -KILL "${WPIDS[3]}"
wait_until "$id" "len(workers) == 3 and sum(len(w.get('ranks', [])) for w in workers) == 4" \
  "3 workers holding the 4 ranks after the SIGKILL"
at=$(job_field "$id" "step")
wait_until "$id" "step >= $at + 20" "20 steps on 3 workers"
echo "3 workers after a SIGKILL, by step $at"
kill -TERM "${WPIDS[1]}" "${WPIDS[2]}"
for k in 1 2; do
  code=0
  wait "${WPIDS[$k]}" || code=$?
  [ "$code" = 0 ] || fail "SIGTERMed worker $((k + 1)) exited $code"
  grep -q "leaving: every rank released" "$WORK/e.w$((k + 1)).log" ||
    fail "worker $((k + 1)) did not release its ranks before exiting"
done
echo "two workers left on SIGTERM at about step $(job_field "$id" "step")"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { cat "$WORK/$id.watch"; fail "job $id did not succeed"; }
status=$("${CTL[@]}" get "$id")
echo "$status" | python3 -c '
import json, sys
s = json.load(sys.stdin)
history = [(h["kind"], h["workerId"]) for h in s["membershipHistory"]]
print("membership epoch", s["membershipEpoch"], "history", history)
kinds = [k for k, _ in history]
assert kinds.count("JOINED") == 4, history
assert kinds.count("DIED") == 1, history
assert kinds.count("LEFT") == 2, history
assert len(s["workers"]) == 1 and sorted(s["workers"][0]["ranks"]) == [0, 1, 2, 3], s["workers"]
assert int(s["membershipEpoch"]) >= 7, s["membershipEpoch"]
' || fail "membership in the status: $status"
"${CTL[@]}" export "$id" "$WORK/e.safetensors" >"$WORK/e.export"
elastic=$(grep -o 'crc32:[0-9a-f]*' "$WORK/e.export")
echo "2 -> 4 -> 3 -> 1 workers: $elastic"
[ "$elastic" = "$reference" ] ||
  fail "the elastic run's parameters ($elastic) differ from the undisturbed run's ($reference)"

# Exactly once: per epoch, the distinct (step, rank) batches cover every
# example once; a (step, rank) seen twice is the killed worker's last step
# (logged before its push), redone by the rank's next worker (the servers
# took one of them).
python3 - "$id" 4800 6 "$WORK"/samples.w* <<'PY'
import collections, sys
job, size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batches, repeats = {}, 0
for path in sys.argv[4:]:
    for line in open(path):
        f = line.split()
        if f[0] != job:
            continue
        key = (int(f[1]), int(f[2]), int(f[3]))
        idx = tuple(int(x) for x in f[4:])
        if key in batches:
            assert batches[key] == idx, ("a batch differs when redone", key)
            repeats += 1
        batches[key] = idx
assert repeats <= 4, ("batches trained twice", repeats)
for e in range(epochs):
    count = collections.Counter()
    for (epoch, step, rank), idx in batches.items():
        if epoch == e:
            count.update(idx)
    assert sorted(count) == list(range(size)), ("epoch", e, "misses examples", size - len(count))
    assert set(count.values()) == {1}, ("epoch", e, "examples trained more than once")
print("exactly once: %d epochs x %d examples; %d batch(es) redone after the SIGKILL" % (epochs, size, repeats))
PY
stop_cluster

# Below min_workers: the job pauses with a reason, and goes on when a
# worker registers.
sed 's/^min_workers: 1/min_workers: 2/' "$WORK/elastic.textproto" >"$WORK/min2.textproto"
start_cluster p 2 0
PWPIDS=()
for i in 1 2; do
  start_worker "p.w$i" "${SLOW[@]}"
  PWPIDS+=($WPID)
done
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
id=$("${CTL[@]}" submit "$WORK/min2.textproto")
wait_until "$id" "step >= 10" "step 10"
kill -TERM "${PWPIDS[1]}"
wait "${PWPIDS[1]}" || fail "SIGTERMed worker exited non-zero"
wait_until "$id" "'fewer than min_workers 2' in s.get('pausedReason', '')" "pause below min_workers"
paused_at=$(job_field "$id" "step")
echo "paused at step $paused_at: $(job_field "$id" "s['pausedReason']")"
start_worker p.w3 "${SLOW[@]}"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { cat "$WORK/$id.watch"; fail "job $id did not succeed after the pause"; }
[ -z "$(job_field "$id" "s.get('pausedReason', '')")" ] || fail "still paused after finishing"
"${CTL[@]}" export "$id" "$WORK/p.safetensors" >"$WORK/p.export"
paused=$(grep -o 'crc32:[0-9a-f]*' "$WORK/p.export")
[ "$paused" = "$reference" ] || fail "the paused run's parameters ($paused) differ from $reference"
echo "PASS"
