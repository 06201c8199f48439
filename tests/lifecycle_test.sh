#!/usr/bin/env bash
# Job lifecycle: two jobs run side by side without mixing their parameters,
# a finished job keeps only its parameters on the servers (for export) until
# it is deleted, and deleting frees them.
source tests/cluster_lib.sh

write_short_job "$WORK/a.textproto"
sed 's/^name: "short"/name: "other"/; s/^seed: 42/seed: 7/' "$WORK/a.textproto" >"$WORK/b.textproto"
start_cluster a 2 4

# Job a alone: the reference checksum.
alone=$(run_job "$WORK/a.textproto" "$WORK/alone.safetensors")

# Jobs a and b at once, on 2 + 2 workers.
a=$("${CTL[@]}" submit "$WORK/a.textproto")
b=$("${CTL[@]}" submit "$WORK/b.textproto")
both=0
for _ in $(seq 400); do
  running=$("${CTL[@]}" list | grep -c '"state": "RUNNING"' || true)
  [ "$running" -ge 2 ] && { both=1; break; }
  sleep 0.02
done
[ $both -eq 1 ] || fail "jobs $a and $b never ran side by side"
"${CTL[@]}" watch "$a" >/dev/null || fail "job $a failed"
"${CTL[@]}" watch "$b" >/dev/null || fail "job $b failed"
side=$("${CTL[@]}" export "$a" "$WORK/a.safetensors" | grep -o 'crc32:[0-9a-f]*')
other=$("${CTL[@]}" export "$b" "$WORK/b.safetensors" | grep -o 'crc32:[0-9a-f]*')
echo "alone $alone, side by side $side, other job $other"
[ "$alone" = "$side" ] || fail "job $a's parameters changed when $b ran beside it"
[ "$side" != "$other" ] || fail "jobs $a and $b exported the same parameters"

# A finished job keeps only its parameters: 784*256+256+256*128+128+128*10+10
# floats = 235,146 floats = 940,584 bytes over all servers.
held=$("${CTL[@]}" servers)
bytes=$(echo "$held" | python3 -c '
import json, sys, re
total = 0
for chunk in re.split(r"^server-\S+ \(\S+\): ", sys.stdin.read(), flags=re.M)[1:]:
    for job in json.loads(chunk).get("jobs", []):
        if job["jobId"] == sys.argv[1]:
            assert job.get("finished"), job
            total += int(job["stateBytes"])
print(total)' "$a")
[ "$bytes" = 940584 ] || fail "finished job $a holds $bytes bytes on the servers, want 940584: $held"

# Delete frees it; the job is gone from the coordinator and the servers.
"${CTL[@]}" delete "$a" >/dev/null || fail "delete $a"
"${CTL[@]}" servers | grep_all "\"$a\"" && fail "servers still hold $a after delete"
"${CTL[@]}" list | grep_all "\"$a\"" && fail "coordinator still lists $a"
if "${CTL[@]}" export "$a" "$WORK/gone.safetensors" 2>"$WORK/err"; then
  fail "export of a deleted job succeeded"
fi
grep -q NOT_FOUND "$WORK/err" || fail "export of a deleted job: $(cat "$WORK/err")"
# Deleting a running job is refused: cancel it first.
c=$("${CTL[@]}" submit "$WORK/b.textproto")
if "${CTL[@]}" delete "$c" 2>"$WORK/err"; then fail "deleted job $c while not finished"; fi
grep -q FAILED_PRECONDITION "$WORK/err" || fail "delete $c: $(cat "$WORK/err")"
"${CTL[@]}" cancel "$c" >/dev/null
"${CTL[@]}" delete "$c" >/dev/null || fail "delete of cancelled $c"
echo PASS
