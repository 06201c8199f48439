#!/usr/bin/env bash
# Installs the Debian packages psd needs to build, test and run, if any are
# missing. Idempotent, and silent when everything is already there.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap g++ libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler librocksdb-dev libspdlog-dev catch2 zlib1g-dev grpc-proto
  dataset-fashion-mnist libopenblas-dev libbenchmark-dev python3-numpy
  libcpp-httplib-dev python3-yaml python3-protobuf
  clang libclang-rt-14-dev
)

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
