#!/usr/bin/env bash
# Installs the Debian packages psd needs to build, test and run, if any are
# missing. Idempotent, and silent when everything is already there.
#   --no-containers  leave out CONTAINER_TOOLS (the Dockerfile's build stage)
#   --no-torch       leave out TORCH (the Dockerfile's build stage too: the
#                    image's binaries need neither torch nor Python headers)
set -euo pipefail

PACKAGES=(
  bazel-bootstrap g++ libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler librocksdb-dev libspdlog-dev catch2 zlib1g-dev grpc-proto
  dataset-fashion-mnist libopenblas-dev libbenchmark-dev python3-numpy
  libcpp-httplib-dev python3-yaml python3-protobuf
  clang libclang-rt-14-dev
)
# psd.torch (issue 18): the extension's headers, and torch for its tests and
# the PyTorch baselines.
TORCH=(pybind11-dev python3-dev python3-torch)
# What tests/container_test.sh runs the cluster with (docs/DEPLOY.md):
# podman 4.3 with Debian's runc (crun cannot set rlimits or use hybrid
# cgroups in CI's sandbox), netavark and aardvark-dns (user-defined networks
# where containers find each other by name), mmdebstrap (the
# debian:bookworm-slim base, with no registry reachable), uidmap and
# slirp4netns (podman's own dependencies for rootless use), iptables.
CONTAINER_TOOLS=(
  podman runc netavark aardvark-dns mmdebstrap uidmap slirp4netns iptables
)
containers=1
torch=1
for arg in "$@"; do
  case "$arg" in
    --no-containers) containers=0 ;;
    --no-torch) torch=0 ;;
    *) echo "install_deps: unknown option $arg (--no-containers, --no-torch)" >&2; exit 2 ;;
  esac
done
[ "$containers" = 0 ] || PACKAGES+=("${CONTAINER_TOOLS[@]}")
[ "$torch" = 0 ] || PACKAGES+=("${TORCH[@]}")

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    echo "install_deps: missing packages (${missing[*]}) and not root; install them with apt-get" >&2
    exit 1
  fi
fi
echo "install_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
