"""What the static checks of deploy/ share (k8s_manifest_test.py,
dockerfile_check.py): paths, the binaries, and the list of problems found."""

import os

BIN = os.environ.get("BIN", ".")
K8S = "deploy/k8s"
DOCKERFILE = "deploy/docker/Dockerfile"
JOB_JSON = "deploy/jobs/fashion_mnist_mlp.json"
BINARIES = {  # binary name -> Bazel label
    "psd_coordinator": "//server/coordinator:psd_coordinator",
    "psd_server": "//server/ps:psd_server",
    "psd_worker": "//worker:psd_worker",
    "psd_ctl": "//deploy:psd_ctl",
    "psd_serve": "//server/serving:psd_serve",
}
WORKLOADS = ("StatefulSet", "Deployment", "Job", "DaemonSet")
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}

problems = []


def problem(msg):
    problems.append(msg)
    print("PROBLEM: " + msg)


def note(msg):
    print("k8s_manifest_test: " + msg)


BINARY_PATHS = {name: label[2:].replace(":", "/")
                for name, label in BINARIES.items()}
