#!/usr/bin/env bash
# psd.torch (issue 18): a torch.nn.Module trained by Python workers through
# psd's C++ client, on real servers and a real coordinator on loopback.
#  1. A job config with a bad EXTERNAL model is refused naming the field.
#  2. BSP determinism: two runs of 2 torch workers give the same checksum;
#     ASP and SSP jobs finish with every push applied.
#  3. One worker: bad input raises Python exceptions naming the parameter
#     (shape mismatch, unknown and missing parameters, float64, a data set
#     of the wrong size, an unreachable coordinator); then 100 steps of
#     server-side SGD with momentum agree with torch.optim.SGD run locally
#     within 1e-6.
#  4. The export (psd_ctl export) loads back into the module and equals the
#     worker's parameters.
source tests/cluster_lib.sh
source tests/torch_lib.sh

start_cluster a 2 0

# --- 1. Bad configs are refused, naming the field.
torch_job 2 2000 1 | sed 's/shape: \[4, 1, 3, 3\]/shape: [4, 0, 3, 3]/' >"$WORK/bad.textproto"
grep -q 'shape: \[4, 0, 3, 3\]' "$WORK/bad.textproto" || fail "sed did not break the shape"
if "${CTL[@]}" submit "$WORK/bad.textproto" 2>"$WORK/bad.err"; then fail "a zero dimension was accepted"; fi
grep -q 'model.parameters\[0\].shape\[1\]' "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "the refusal does not name the field"; }
echo "1. bad config refused: $(grep -o 'model.parameters.*' "$WORK/bad.err" | head -1)"

# --- 2. BSP determinism.
torch_job 2 2000 2 >"$WORK/job.textproto"
sums=()
for run in 1 2; do
  wait_no_workers
  start_torch_workers run$run 2
  id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
  # The workers first: one that failed leaves the job waiting for it.
  wait_torch_workers "run $run"
  "${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "job $id did not succeed"; }
  sums+=("$(export_checksum "$id" "$WORK/run$run.safetensors")")
done
echo "2. two BSP runs: ${sums[0]} ${sums[1]}"
[ "${sums[0]}" = "${sums[1]}" ] || fail "two BSP runs differ: ${sums[*]}"

# --- 2b. ASP and SSP (staleness 2) jobs finish, every rank's every push
# applied on every server.
for label in ASP SSP; do
  torch_job 2 2000 1 | sed "s/^consistency: BSP\$/consistency: $label/" >"$WORK/async.textproto"
  [ "$label" = SSP ] && echo "staleness: 2" >>"$WORK/async.textproto"
  grep -q "^consistency: $label\$" "$WORK/async.textproto" || fail "sed did not set $label"
  wait_no_workers
  start_torch_workers "$label" 2
  id=$("${CTL[@]}" submit "$WORK/async.textproto") || fail "submit $label"
  wait_torch_workers "$label"
  "${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "job $id did not succeed"; }
  n=$(servers_with_all_pushes "$id" 31) || fail "$label: $n"
  [ "$n" -ge 1 ] || fail "$label: no server holds job $id"
  echo "2b. $label: succeeded, 31 pushes of each rank applied on $n servers"
done

# --- 3. Bad input, then parity with torch.optim.SGD (100 steps).
torch_job 1 3200 1 >"$WORK/parity.textproto"
wait_no_workers
"${TORCH_WORKER[@]}" check --coordinator="$COORDINATOR" "${TORCH_TLS[@]}" \
  --out="$WORK/parity.pt" >"$WORK/check.out" 2>"$WORK/check.log" &
check_pid=$!
PIDS+=($check_pid)
id=$("${CTL[@]}" submit "$WORK/parity.textproto") || fail "submit parity"
wait $check_pid || { cat "$WORK/check.out"; tail -20 "$WORK/check.log"; fail "check failed"; }
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "job $id did not succeed"; }
sed 's/^/3. /' "$WORK/check.out"

# --- 4. The export loads back into the module.
export_checksum "$id" "$WORK/parity.safetensors" >/dev/null
/usr/bin/python3 tests/torch_worker.py load --export="$WORK/parity.safetensors" \
  --params="$WORK/parity.pt" | sed 's/^/4. /' || fail "load-back"
echo PASS
