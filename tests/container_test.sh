#!/usr/bin/env bash
# The psd cluster as containers (issue 24): the image is built from the
# suite's own binaries with deploy/docker/Dockerfile's runtime stage (so the
# image tested is the image shipped), on a debian:bookworm-slim base made
# with mmdebstrap where no registry is reachable (tests/container_lib.sh).
# A coordinator (R=2), 3 servers and 2 workers run as containers on a
# user-defined podman network and find each other by DNS name
# (psd-coordinator, psd-server-I, psd-worker-I), over mutual TLS; psd_ctl
# runs in a container on that network too.
#   1. The same short job as plain processes on loopback gives a checksum
#      (the reference).
#   2. In containers, once the job has done 20 steps, the container of
#      shard 0's primary is restarted (`podman restart`, what a kubelet
#      does after a crash); the job ends SUCCEEDED above the accuracy floor,
#      with the reference checksum, and every replica agrees.
#   3. With buf (PSD_BUF, as grpcurl_test), every service each container's
#      process lists by reflection answers SERVING by name in
#      grpc.health.v1.Health (what a grpc: probe naming it asks).
# Where containers cannot run here (not root, podman or its base image
# missing) it prints "SKIP: container_test: REASON" and exits 0; where
# podman is installed but cannot run a container, it fails.
set -euo pipefail
PSD_TEST_TLS=1 # every process, in containers too, talks mutual TLS
source tests/cluster_lib.sh
source tests/replicated_lib.sh
source tests/container_lib.sh

FLOOR=0.80
EPOCHS=4
containers_setup
build_image
container_certs

undisturbed_reference "$EPOCHS"

start_containers net 3 2 --replication_factor=2 --heartbeat_timeout_ms=3000
job=$(submit)
victim=$(q "$job" "addr[shards[0]['primary']].split(':')[0]")
[[ $victim == psd-server-* ]] || fail "shard 0's primary is '$victim', not a DNS name"
EPOCH=$(epoch_of "$job")
wait_step "$job" 20
podman restart -t 0 "$NETP-${victim#psd-}" >/dev/null || fail "podman restart $NETP-${victim#psd-}"
echo "restarted container $NETP-${victim#psd-} (shard 0's primary) at step >= 20"
wait_until "$job" "addr[shards[0]['primary']].split(':')[0] != '$victim' and int(j['viewEpoch']) > $EPOCH" \
  "shard 0 still led by the restarted $victim"
wait_until "$job" "all(len(s.get('backups', [])) == 1 for s in j['shards'])" \
  "the restarted $victim never rejoined as a backup"
finish "$job" "containers, $victim restarted"
status=$("${CTL[@]}" get "$job")
accuracy=$(echo "$status" | grep -o '"testAccuracy": [0-9.e-]*' | head -1 | awk '{print $2}')
awk -v a="$accuracy" -v f="$FLOOR" 'BEGIN { exit !(a >= f) }' ||
  fail "test accuracy $accuracy below the floor $FLOOR"
echo "containers: test accuracy $accuracy"
# Health per service (what a Kubernetes grpc: probe naming its service
# asks): every service each process lists by reflection is SERVING by name.
if [ -x "${PSD_BUF:-}" ]; then
  buf=(podman exec "$NETP-ctl" buf curl --protocol grpc --cacert /etc/psd/tls/ca.pem
    --cert /etc/psd/tls/user-alice.pem --key /etc/psd/tls/user-alice.key)
  for target in psd-coordinator:7070 psd-server-2:7071 psd-worker-1:7072; do
    # --insecure: no host name check (only the coordinator's certificate
    # names its DNS name); TLS and the client certificate all the same.
    services=$("${buf[@]}" --insecure --list-services "https://$target") ||
      fail "$target: cannot list services: $services"
    n=0
    for s in $services; do
      out=$("${buf[@]}" --insecure -d "{\"service\": \"$s\"}" \
        "https://$target/grpc.health.v1.Health/Check" 2>&1)
      echo "$out" | grep -q '"status": "SERVING"' || fail "$target: health of $s: $out"
      n=$((n + 1))
    done
    [ "$n" -ge 3 ] || fail "$target lists $n services: $services"
    echo "health: $target: SERVING for each of its $n services ($(echo $services))"
  done
else
  echo "SKIP (health per service): buf not available (PSD_BUF unset); tests/run_tests.sh installs it"
fi
podman logs "$NETP-coordinator" 2>&1 | grep -q "registered again from the same data directory\|missed heartbeats" ||
  fail "the coordinator never noticed the restart of $victim"
echo PASS
