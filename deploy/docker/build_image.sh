#!/usr/bin/env bash
# Builds the psd image with deploy/docker/Dockerfile, Bazel inside the image
# (PSD_BINARIES=build): about 9 minutes on 2 cores, most of it Bazel. Not
# run by the test suite (tests/container_test.sh builds the same runtime
# stage from the suite's binaries instead). docs/DEPLOY.md explains it.
#
#   deploy/docker/build_image.sh [--no-registry] [--prebuilt DIR] [TAG]
#
# TAG: the image's name (default psd:dev).
# --no-registry  for machines that reach no container registry, only a
#                Debian mirror: makes debian:bookworm-slim and
#                debian:bookworm with `mmdebstrap` (minbase), imports them
#                into podman, and builds with --pull=never. The tarballs
#                are kept in ~/.cache/psd-containers for the next build.
# --prebuilt DIR the binaries from DIR (psd_coordinator, psd_server,
#                psd_worker, psd_ctl, psd_serve, built on Debian 12) instead of Bazel
#                in the image (PSD_BINARIES=prebuilt): seconds, not minutes.
# Uses podman, or docker where podman is missing (no --no-registry then).
# Run from anywhere; the build context is the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."

no_registry=0
prebuilt=""
tag=psd:dev
while [ $# -gt 0 ]; do
  case $1 in
    --no-registry) no_registry=1 ;;
    --prebuilt) prebuilt=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build_image: unknown option $1" >&2; exit 2 ;;
    *) tag=$1 ;;
  esac
  shift
done

engine=$(command -v podman || command -v docker || true)
[ -n "$engine" ] || { echo "build_image: neither podman nor docker is installed" >&2; exit 1; }
pull=()
if [ "$no_registry" = 1 ]; then
  [ "$(basename "$engine")" = podman ] ||
    { echo "build_image: --no-registry needs podman (podman import)" >&2; exit 1; }
  command -v mmdebstrap >/dev/null ||
    { echo "build_image: --no-registry needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
  cache=${PSD_CONTAINER_CACHE:-$HOME/.cache/psd-containers}
  mkdir -p "$cache"
  # minbase is what debian:bookworm-slim is (apt, dpkg, no docs trimmed);
  # the build stage's debian:bookworm needs nothing more: install_deps.sh
  # installs the rest.
  for image in bookworm-slim bookworm; do
    if ! podman image exists "docker.io/library/debian:$image"; then
      if [ ! -s "$cache/bookworm-minbase.tar" ]; then
        echo "build_image: mmdebstrap --variant=minbase bookworm" >&2
        mmdebstrap --variant=minbase bookworm "$cache/bookworm-minbase.tar.part"
        mv "$cache/bookworm-minbase.tar.part" "$cache/bookworm-minbase.tar"
      fi
      podman import --change 'CMD ["bash"]' "$cache/bookworm-minbase.tar" \
        "docker.io/library/debian:$image"
    fi
  done
  pull=(--pull=never)
fi

if [ -n "$prebuilt" ]; then
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  mkdir "$ctx/prebuilt"
  for b in psd_coordinator psd_server psd_worker psd_ctl psd_serve; do
    cp "$prebuilt/$b" "$ctx/prebuilt/"
  done
  "$engine" build "${pull[@]}" --build-arg PSD_BINARIES=prebuilt --target runtime \
    -f deploy/docker/Dockerfile -t "$tag" "$ctx"
else
  # PSD_BINARIES given explicitly: podman 4.3 cannot follow a default one.
  "$engine" build "${pull[@]}" --build-arg PSD_BINARIES=build --target runtime \
    -f deploy/docker/Dockerfile -t "$tag" .
fi
echo "build_image: built $tag" >&2
