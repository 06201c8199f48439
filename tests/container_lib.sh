# Shared by tests/container_test.sh and tests/bench/container_network_bench.sh
# (issue 24): podman set up in a config of its own, the psd image built from
# the suite's binaries with deploy/docker/Dockerfile's runtime stage, and a
# psd cluster whose processes are containers. Source it after
# tests/cluster_lib.sh (WORK, fail); defines functions and P (the prefix of
# every container and network name this run makes, removed on exit).
#
# podman 4.3 (Debian 12) as root, configured by $WORK/containers.conf through
# CONTAINERS_CONF (nothing in /etc changes): runc, since crun cannot set
# RLIMIT_NOFILE or use hybrid cgroups in a sandbox like CI's; default
# ulimits under the sandbox's hard limits; netavark + aardvark-dns, so that
# containers on a user-defined network find each other by name, the way
# Kubernetes Services work.

P=psdct$$
IMAGE=localhost/psd:test
BASE=docker.io/library/debian:bookworm-slim
# The mmdebstrap tarball of the base is kept here between runs (CI reruns).
CACHE=${PSD_CONTAINER_CACHE:-$(getent passwd "$(id -u)" | cut -d: -f6)/.cache/psd-containers}
export PATH=$PATH:/usr/sbin:/sbin # iptables, for netavark

# skip REASON: says why and exits 0 (nothing was started yet; cluster_lib's
# exit checks, which want TLS logs, do not apply).
skip() {
  echo "SKIP: $(basename "$0" .sh): $*"
  trap - EXIT
  exit 0
}

# containers_setup: skips (exit 0, "SKIP: reason") where containers cannot
# run for want of root, podman, or a way to get the base image; fails where
# podman is installed but cannot run a container.
containers_setup() {
  [ "$(id -u)" -eq 0 ] || skip "needs root (rootful podman; uid $(id -u))"
  command -v podman >/dev/null ||
    skip "podman is not installed (deploy/install_deps.sh installs it)"
  command -v runc >/dev/null || skip "runc is not installed (deploy/install_deps.sh installs it)"
  [ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] ||
    skip "netavark is not installed (deploy/install_deps.sh installs it)"
  # Default ulimits no higher than this sandbox's hard limits.
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  { [ "$nofile" = unlimited ] || [ "$nofile" -gt 20000 ]; } && nofile=20000
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; } && nproc=4096
  cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
CONF
  export CONTAINERS_CONF=$WORK/containers.conf
  local backend
  backend=$(podman info --format '{{.Host.NetworkBackend}}' 2>&1) ||
    fail "podman is installed but does not work: $backend"
  [ "$backend" = netavark ] ||
    skip "podman uses the $backend network backend, not netavark: containers.conf cannot switch an existing store (podman system reset would)"
  base_image
  local out
  out=$(podman run --rm --pull=never "$BASE" true 2>&1) ||
    fail "podman is installed but cannot run a container: $out"
  trap 'containers_cleanup' EXIT
}

# base_image: debian:bookworm-slim in podman's store; with no registry
# reachable, made with mmdebstrap (minbase, from the Debian mirror) and
# imported; the tarball is cached in $CACHE.
base_image() {
  podman image exists "$BASE" && return 0
  local tar=$CACHE/bookworm-minbase.tar
  # A directory there was left by a version of this function that let
  # mmdebstrap choose its output format from the file name ("x.tar.part"
  # is no tarball's name, so it wrote a directory tree).
  [ -d "$tar" ] && rm -rf "$tar"
  if [ ! -s "$tar" ]; then
    command -v mmdebstrap >/dev/null ||
      skip "no $BASE image and no mmdebstrap to make one (deploy/install_deps.sh installs it)"
    mkdir -p "$CACHE"
    rm -rf "$tar.part"
    echo "container: making $BASE with mmdebstrap --variant=minbase bookworm"
    mmdebstrap --quiet --variant=minbase --format=tar bookworm "$tar.part" \
      >"$WORK/mmdebstrap.log" 2>&1 ||
      skip "mmdebstrap could not make the base image (no Debian mirror?): $(tail -3 "$WORK/mmdebstrap.log")"
    mv "$tar.part" "$tar"
  fi
  podman import --change 'CMD ["bash"]' "$tar" "$BASE" >/dev/null ||
    fail "podman import $tar failed"
}

# build_image: $IMAGE from deploy/docker/Dockerfile's runtime stage with
# the suite's binaries (PSD_BINARIES=prebuilt). The apt layer is cached by
# podman between runs.
build_image() {
  local ctx=$WORK/image-context
  mkdir -p "$ctx/prebuilt"
  cp "$BIN/server/coordinator/psd_coordinator" "$BIN/server/ps/psd_server" \
    "$BIN/worker/psd_worker" "$BIN/deploy/psd_ctl" "$BIN/server/serving/psd_serve" \
    "$ctx/prebuilt/"
  local old
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  podman build --pull=never --build-arg PSD_BINARIES=prebuilt --target runtime \
    -f deploy/docker/Dockerfile -t "$IMAGE" "$ctx" >"$WORK/image-build.log" 2>&1 || {
    tail -20 "$WORK/image-build.log"
    fail "podman build of deploy/docker/Dockerfile (PSD_BINARIES=prebuilt) failed"
  }
  # The previous run's image, if these binaries made a new one.
  [ -z "$old" ] || [ "$old" = "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ] ||
    podman rmi "$old" >/dev/null 2>&1 || true
  local user
  user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
  [ "$user" = 10001:10001 ] || fail "the image runs as '$user', not 10001:10001"
}

# containers_cleanup: keeps every container's log in $WORK (cluster_lib.sh's
# on_exit shows them on failure), removes this run's containers and
# networks, then runs cluster_lib.sh's on_exit.
containers_cleanup() {
  local code=$? c
  set +e # (exit $code) below must not end the handler
  for c in $(podman ps -a --filter "name=^$P-" --format '{{.Names}}' 2>/dev/null); do
    podman logs "$c" >"$WORK/$c.log" 2>&1 || true
    podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
  done
  for c in $(podman network ls --filter "name=^$P" --format '{{.Name}}' 2>/dev/null); do
    podman network rm -f "$c" >/dev/null 2>&1 || true
  done
  (exit $code)
  on_exit
}

# TLS for the containers: deploy/make_certs.sh's certificates, in a copy
# that uid 10001 can read, mounted at /etc/psd/tls.
container_certs() {
  mkdir -p "$WORK/ctls"
  cp "$TLS_DIR"/*.pem "$TLS_DIR"/*.key "$WORK/ctls/"
  chmod 0755 "$WORK/ctls"
  chmod 0644 "$WORK/ctls"/*
}
ctls() { echo "--tls_ca_file=/etc/psd/tls/ca.pem --tls_cert_file=/etc/psd/tls/$1.pem --tls_key_file=/etc/psd/tls/$1.key"; }

# start_containers NET SERVERS WORKERS [COORDINATOR_ARGS...]: a network
# (NET host...: the host's, else a new user-defined bridge network $P-NET)
# and on it the containers $P-NET-coordinator, -server-I, -worker-I and
# -ctl (psd_ctl's shell, with $WORK mounted); on a bridge network each is
# known by its DNS name (psd-coordinator, psd-server-I, psd-worker-I), on
# the host's by 127.0.0.1 and its port. Sets CTL (ctl_in_container) and
# NETP (the container name prefix); PSD_BUF set, buf is in -ctl too, as
# /usr/local/bin/buf. PSD_CONTAINER_ARGS: more podman run
# options for every container (e.g. -e GRPC_VERBOSITY=debug);
# PSD_NETWORK_MTU: the bridge network's MTU (podman's default: 1500);
# PSD_PIN_BRIDGE_MAC=0: leave the bridge's MAC address to the kernel (see
# pin_bridge_mac; for measuring what that costs).
start_containers() {
  local net=$1 servers=$2 workers=$3 i
  shift 3
  NETP=$P-$net
  [[ $net == host* ]] && net=host
  local run=(podman run -d --pull=never -v "$WORK/ctls:/etc/psd/tls:ro"
    ${PSD_CONTAINER_ARGS:-})
  local coord=psd-coordinator:7070
  if [ "$net" = host ]; then
    run+=(--network=host)
    coord=127.0.0.1:7070
  else
    podman network create ${PSD_NETWORK_MTU:+--opt mtu=$PSD_NETWORK_MTU} "$NETP" >/dev/null ||
      fail "podman network create $NETP"
    run+=(--network="$NETP")
  fi
  # host network: one port per process (7070, 7171+I, 7271+I)
  local sport=7071 wport=7072
  # dns_alias NAME: the DNS name option on a bridge network.
  dns_alias() { [ "$net" = host ] || echo "--network-alias=$1"; }
  "${run[@]}" --name "$NETP-coordinator" $(dns_alias psd-coordinator) "$IMAGE" \
    psd_coordinator --listen=0.0.0.0:7070 $(ctls coordinator) "$@" >/dev/null ||
    fail "the coordinator container did not start"
  [ "$net" = host ] || [ "${PSD_PIN_BRIDGE_MAC:-1}" = 0 ] || pin_bridge_mac "$NETP"
  for i in $(seq "$servers"); do
    [ "$net" = host ] && sport=$((7170 + i))
    local adv=psd-server-$i
    [ "$net" = host ] && adv=127.0.0.1
    "${run[@]}" --name "$NETP-server-$i" $(dns_alias "psd-server-$i") "$IMAGE" \
      psd_server --coordinator="$coord" --listen="0.0.0.0:$sport" \
      --advertise="$adv:$sport" --data_dir=/var/lib/psd/data \
      --connect_timeout_ms=60000 $(ctls server) >/dev/null ||
      fail "server container $i did not start"
  done
  for i in $(seq "$workers"); do
    [ "$net" = host ] && wport=$((7270 + i))
    local adv=psd-worker-$i
    [ "$net" = host ] && adv=127.0.0.1
    "${run[@]}" --name "$NETP-worker-$i" $(dns_alias "psd-worker-$i") "$IMAGE" \
      psd_worker --coordinator="$coord" --listen="0.0.0.0:$wport" \
      --advertise="$adv:$wport" --connect_timeout_ms=60000 $(ctls worker) >/dev/null ||
      fail "worker container $i did not start"
  done
  chmod 0777 "$WORK"
  # buf (grpcurl's stand-in; tests/run_tests.sh installs it), if given.
  local buf=()
  [ -x "${PSD_BUF:-}" ] && buf=(-v "$(readlink -f "$PSD_BUF"):/usr/local/bin/buf:ro")
  "${run[@]}" --name "$NETP-ctl" -v "$WORK:/work" "${buf[@]}" "$IMAGE" sleep infinity >/dev/null ||
    fail "the psd_ctl container did not start"
  CTL_COORDINATOR=$coord
  CTL=(ctl_in_container)
  "${CTL[@]}" --servers="$servers" --workers="$workers" --timeout_s=60 wait-ready ||
    fail "the $net-network cluster never became ready"
}

# pin_bridge_mac NET: fixes the MAC address of NET's bridge to the one it
# has now, its first container's. A Linux bridge whose address was never set
# takes the lowest of its ports' addresses, so it changes as containers
# start, stop or restart; netavark sets it only in releases after Debian
# 12's 1.4 (containers/netavark#833, 2023). Every container that cached
# the old address in its ARP table then loses the gateway, where
# aardvark-dns answers, until that entry is probed again: about 10 s per
# DNS lookup, and gRPC's resolver turned that into 40-100 s stalls
# (docs/PERFORMANCE.md, "Containers"). Kubernetes' bridge CNI plugin sets
# the address itself.
pin_bridge_mac() {
  local bridge mac
  bridge=$(podman network inspect --format '{{.NetworkInterface}}' "$1") ||
    fail "podman network inspect $1"
  mac=$(cat "/sys/class/net/$bridge/address") || fail "no bridge $bridge for network $1"
  ip link set dev "$bridge" address "$mac" || fail "cannot set the MAC address of $bridge"
}

# ctl_in_container ARGS...: psd_ctl ARGS in the -ctl container, as alice;
# paths under $WORK become /work, where it is mounted ($WORK itself may lie
# under a folder that the image's user cannot enter, as Bazel's does).
ctl_in_container() {
  local args=() a
  for a in "$@"; do args+=("${a//$WORK//work}"); done
  podman exec "$NETP-ctl" psd_ctl --coordinator="$CTL_COORDINATOR" $(ctls user-alice) "${args[@]}"
}

# stop_containers: removes the containers and network of start_containers
# (their logs kept in $WORK).
stop_containers() {
  local c
  for c in $(podman ps -a --filter "name=^$NETP-" --format '{{.Names}}'); do
    podman logs "$c" >"$WORK/$c.log" 2>&1 || true
    podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
  done
  podman network rm -f "$NETP" >/dev/null 2>&1 || true
}
