#!/usr/bin/env bash
# Static checks of the Kubernetes manifests (deploy/k8s) and the container
# build file (deploy/docker/Dockerfile) against the real binaries' --help,
# the job config and the Debian packages: see tests/k8s_manifest_test.py.
# Needs python3 with the yaml module (Debian: python3-yaml), and openssl for
# the certificates that README.md's commands make (skipped without it).
set -euo pipefail

for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -c 'import yaml' 2>/dev/null; then
    BIN=${BIN:-.} exec "$py" tests/k8s_manifest_test.py
  fi
done
echo "FAIL: k8s_manifest_test needs python3 with the yaml module (apt-get install python3-yaml)" >&2
exit 1
