#!/usr/bin/env bash
# psd in containers on the host's network against a podman bridge network
# with DNS names (what pods have), issue 24. The quick-start topology: a
# coordinator (R=2), 3 servers and 2 workers, each a container of the image
# tests/container_test.sh builds (tests/container_lib.sh), mutual TLS; the
# quick-start job (deploy/jobs/fashion_mnist_mlp.textproto) cut to EPOCHS
# epochs. Per run, a fresh cluster on one network, then the job: wall
# seconds from submit to SUCCEEDED (psd_ctl watch), the view changes the
# workers saw and their longest failover wait. Networks alternate
# (host, bridge, host, ...), RUNS runs each; prints each run, the medians
# and bridge/host, the runs per network that stalled (nothing is killed
# here, so a view change, a backup dropped for failed replication, or a
# worker's call retried for over 5 s is a stall), and checks that every run
# exported the same parameters. PSD_PIN_BRIDGE_MAC=0 leaves the bridges' MAC addresses to the
# kernel (tests/container_lib.sh, pin_bridge_mac).
#
# Usage (root, podman: deploy/install_deps.sh), from the repository root
# after bazel build //server/... //worker:psd_worker //deploy:psd_ctl:
#   tests/bench/container_network_bench.sh [RUNS] [EPOCHS]   (default 3, 2)
# NETWORKS: the networks, in order, of each round (default "host bridge";
# "jumbo" is a bridge network with MTU 65520 instead of podman's 1500).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
EPOCHS=${2:-2}
BIN=${BIN:-bazel-bin}
PSD_TEST_TLS=1
source tests/cluster_lib.sh
source tests/replicated_lib.sh
source tests/container_lib.sh

containers_setup
build_image
container_certs
sed "s/^epochs: .*/epochs: $EPOCHS/" deploy/jobs/fashion_mnist_mlp.textproto >"$WORK/job.textproto"
grep -q "^epochs: $EPOCHS\$" "$WORK/job.textproto" || fail "no epochs line in the quick-start job"

declare -A SECONDS_OF STALLS
sums=()
for run in $(seq "$RUNS"); do
  for net in ${NETWORKS:-host bridge}; do
    mtu=""
    [ "$net" = jumbo ] && mtu=65520
    PSD_NETWORK_MTU=$mtu start_containers "$net$run" 3 2 --replication_factor=2
    job=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
    t0=$(date +%s.%N)
    "${CTL[@]}" watch "$job" >"$WORK/$net$run.watch" || fail "$net run $run: job failed"
    t1=$(date +%s.%N)
    sum=$("${CTL[@]}" export "$job" "$WORK/$net$run.safetensors" | grep -o 'crc32:[0-9a-f]*')
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    SECONDS_OF[$net]+="$s "
    sums+=("$sum")
    stop_containers # keeps the logs in $WORK
    # View changes during the job, and the longest failover a worker saw.
    views=$(cat "$WORK/$NETP"-worker-*.log | { grep -c 'view epoch .* -> ' || true; })
    longest=$(cat "$WORK/$NETP"-worker-*.log | { grep -o 'failed over after [0-9]* ms' || true; } |
      awk '{ if ($4 > m) m = $4 } END { print m + 0 }')
    [ "$views" -eq 0 ] && [ "$longest" -le 5000 ] || STALLS[$net]=$((${STALLS[$net]:-0} + 1))
    echo "run $run $net: $s s ($sum; view changes seen by workers: $views, longest failover $longest ms)"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
h=$(echo "${SECONDS_OF[host]:-0}" | median)
b=$(echo "${SECONDS_OF[bridge]:-0}" | median)
j=$(echo "${SECONDS_OF[jumbo]:-0}" | median)
ratio() { awk -v h="$h" -v b="$1" 'BEGIN { printf "%.2f", (h > 0 ? b / h : 0) }'; }
echo "median submit-to-SUCCEEDED: host network $h s, bridge network $b s ($(ratio "$b")x), bridge with MTU 65520 $j s ($(ratio "$j")x)"
for net in ${NETWORKS:-host bridge}; do
  echo "$net: ${STALLS[$net]:-0} of $RUNS runs stalled (a view change, or a worker's call retried for over 5 s)"
done
[ "$(printf '%s\n' "${sums[@]}" | sort -u | wc -l)" = 1 ] ||
  fail "runs exported different parameters: ${sums[*]}"
