"""Rendered-manifest checks of deploy/k8s (issue 24), run by
k8s_manifest_test.py:

  - every kustomization under deploy/k8s (found by glob, so a new overlay is
    checked without being listed here) renders with `kubectl kustomize`; a
    Component renders on top of deploy/k8s;
  - every rendered object validates against the official Kubernetes schemas
    of the npm package kubernetes-models (tests/k8s_schema_check.mjs; wrong
    types, missing required fields, and fields the schema does not define,
    which the API server refuses), when PSD_KUBERNETES_MODELS names its
    install folder (tests/run_tests.sh installs it, pinned) and node runs;
    else a plain SKIP line;
  - what the schemas leave to the API server: names it would refuse
    (metadata.name a DNS-1123 subdomain, a Service's a DNS-1035 label,
    container names DNS-1123 labels, port names IANA service names, label
    values), and probes whose port no container of the pod declares
    (httpGet, tcpSocket, grpc: by number or name; exec probes running
    `psd_ctl health HOST:PORT`).
"""

import contextlib
import glob
import io
import json
import os
import re
import shutil
import subprocess

import yaml

from static_check import K8S, note, problem, problems

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def kustomize(kubectl, directory):
    """(objects, error) of `kubectl kustomize DIRECTORY`."""
    r = subprocess.run([kubectl, "kustomize", directory], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return [d for d in yaml.safe_load_all(r.stdout) if d], None


def work_copy():
    """A copy of deploy/k8s with regular files (kustomize refuses the
    runfiles' links), in the test's temporary folder; returns its root."""
    work = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "psd-kustomize")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(K8S, os.path.join(work, K8S), symlinks=False)
    return work


def render_all(kubectl, work):
    """[(source, object)] of every kustomization under deploy/k8s."""
    rendered = []
    paths = sorted(glob.glob(os.path.join(work, K8S, "**", "kustomization.yaml"),
                             recursive=True))
    for path in paths:
        directory = os.path.dirname(path)
        source = os.path.relpath(directory, work)
        with open(path) as f:
            kind = (yaml.safe_load(f) or {}).get("kind", "Kustomization")
        target = directory
        if kind == "Component":
            target = os.path.join(work, "overlay-" + source.replace("/", "-"))
            os.makedirs(target)
            with open(os.path.join(target, "kustomization.yaml"), "w") as f:
                f.write("resources: [%s]\ncomponents: [%s]\n" % (
                    os.path.relpath(os.path.join(work, K8S), target),
                    os.path.relpath(directory, target)))
            source += " (Component, on deploy/k8s)"
        objects, err = kustomize(kubectl, target)
        if err is not None:
            problem("kubectl kustomize %s failed: %s" % (source, err))
            continue
        note("kubectl kustomize %s: %d objects" % (source, len(objects)))
        rendered += [(source, o) for o in objects]
    if not paths:
        problem("no kustomization.yaml under %s" % K8S)
    return rendered


def check_schemas(rendered):
    models = os.environ.get("PSD_KUBERNETES_MODELS", "")
    node = shutil.which("node")
    if not models or not os.path.isdir(os.path.join(models, "node_modules", "kubernetes-models")):
        note("SKIP schema validation: kubernetes-models is not installed "
             "(PSD_KUBERNETES_MODELS=%r; tests/run_tests.sh installs it from npm)" % models)
        return
    if not node:
        note("SKIP schema validation: no node on PATH (Debian: nodejs)")
        return
    tmp = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "psd-k8s-objects.json")
    with open(tmp, "w") as f:
        json.dump([{"source": s, "object": o} for s, o in rendered], f)
    env = dict(os.environ, NODE_PATH=os.path.join(models, "node_modules"))
    r = subprocess.run([node, "tests/k8s_schema_check.mjs", tmp], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    lines = r.stdout.strip().split("\n")
    for line in lines:
        if line.startswith("FAIL "):
            problem("schema: " + line[5:])
        elif line.startswith("SKIP "):
            note("schema: " + line)
    if r.returncode not in (0, 1) or not any(l.startswith("ok ") for l in lines):
        problem("k8s_schema_check.mjs failed (exit %d): %s" % (r.returncode, r.stdout[-2000:]))
    else:
        note("schema validation (kubernetes-models): %d objects valid, %d failed"
             % (sum(l.startswith("ok ") for l in lines),
                sum(l.startswith("FAIL ") for l in lines)))


def pod_spec_of(o):
    spec = o.get("spec", {})
    if o.get("kind") == "Pod":
        return spec
    if o.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec")


def check_names(rendered):
    for source, o in rendered:
        meta = o.get("metadata", {})
        name = meta.get("name", "")
        where = "%s: %s %s" % (source, o.get("kind"), name)
        if o.get("kind") == "Service":
            if len(name) > 63 or not DNS1035_LABEL.match(name):
                problem("%s: a Service name must be a DNS-1035 label" % where)
        elif len(name) > 253 or not all(DNS1123_LABEL.match(p) for p in name.split(".")):
            problem("%s: the name is not a DNS-1123 subdomain" % where)
        if o.get("kind") == "StatefulSet" and len(name) > 52:
            problem("%s: a StatefulSet name over 52 characters makes pod "
                    "labels the API server refuses" % where)
        labels = dict(meta.get("labels") or {})
        tmpl = (o.get("spec") or {}).get("template", {})
        labels.update((tmpl.get("metadata") or {}).get("labels") or {})
        for k, v in labels.items():
            if len(str(v)) > 63 or not LABEL_VALUE.match(str(v)):
                problem("%s: label %s=%r is not a valid label value" % (where, k, v))
        spec = pod_spec_of(o)
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if not DNS1123_LABEL.match(c.get("name", "")) or len(c.get("name", "")) > 63:
                problem("%s: container name %r is not a DNS-1123 label" % (where, c.get("name")))
            for p in c.get("ports", []):
                if "name" in p and (len(p["name"]) > 15 or not IANA_SVC_NAME.match(p["name"])):
                    problem("%s: port name %r is not an IANA service name" % (where, p["name"]))


def probe_port(probe):
    """The port a probe reaches (int or port name), or None."""
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            return probe[kind].get("port")
    argv = probe.get("exec", {}).get("command", [])
    if argv and argv[0] == "psd_ctl" and "health" in argv:
        i = argv.index("health")
        if i + 1 < len(argv):
            m = re.match(r"^.*:(\d+)$", argv[i + 1])
            return int(m.group(1)) if m else argv[i + 1]
    return None


def check_probe_ports(rendered):
    for source, o in rendered:
        spec = pod_spec_of(o)
        if not spec:
            continue
        declared = set()
        for c in spec.get("containers", []):
            for p in c.get("ports", []):
                declared.add(p.get("containerPort"))
                declared.add(p.get("name"))
        for c in spec.get("containers", []):
            for which in ("readinessProbe", "livenessProbe", "startupProbe"):
                if which not in c:
                    continue
                port = probe_port(c[which])
                if port is None:
                    continue
                if port not in declared:
                    problem("%s: %s %s container %s: the %s reaches port %r, which "
                            "no container of the pod declares"
                            % (source, o.get("kind"), o["metadata"].get("name"),
                               c.get("name"), which, port))


# Objects each check must refuse (self_test): the checks are shown to fail.
BAD_DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
    "spec": {"selector": {"matchLabels": {"app": "bad"}}, "template": {
        "metadata": {"labels": {"app": "bad"}},
        "spec": {"containers": [{
            "name": "psd", "image": "psd", "ports": [{"containerPort": 7070, "name": "grpc"}],
            "readinessProbe": {"tcpSocket": {"port": 7071}},
            "livenessProbe": {"exec": {"command": ["psd_ctl", "health", "127.0.0.1:7072"]}},
        }]}}},
}
SELF_TESTS = [
    ("a Service name with '_'", check_names,
     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "psd_coordinator"},
      "spec": {"ports": [{"port": 7070}]}}, 1),
    ("an upper-case container name, a 20-character port name",
     check_names, {**BAD_DEPLOYMENT, "spec": {**BAD_DEPLOYMENT["spec"], "template": {
         "metadata": {}, "spec": {"containers": [{"name": "Psd", "image": "psd", "ports": [
             {"containerPort": 1, "name": "a-port-name-too-long"}]}]}}}}, 2),
    ("probes on undeclared ports (tcpSocket, psd_ctl health)", check_probe_ports,
     BAD_DEPLOYMENT, 2),
    ("an unknown field (spec.replica)", check_schemas,
     {**BAD_DEPLOYMENT, "spec": {**BAD_DEPLOYMENT["spec"], "replica": 2}}, 1),
    ("a string port", check_schemas,
     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
      "spec": {"ports": [{"port": "grpc"}]}}, 1),
]


def self_test():
    """Each check finds the problems planted in SELF_TESTS' objects."""
    for label, check, obj, want in SELF_TESTS:
        before = len(problems)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            check([("self-test", obj)])
        found = problems[before:]
        del problems[before:]
        if check is check_schemas and "SKIP" in out.getvalue():
            continue
        if len(found) < want:
            problem("self-test: %s: %s found %d problems, want %d: %s"
                    % (label, check.__name__, len(found), want, found))
    note("self-test: the rendered-manifest checks refuse %d planted objects" % len(SELF_TESTS))


def check_rendered():
    """Renders every kustomization and checks the result; returns the
    copy's root for the caller's own overlays, or None without kubectl."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        note("SKIP rendering and schema validation: no kubectl on PATH (Debian's "
             "kubernetes-client package has it)")
        return None
    self_test()
    work = work_copy()
    rendered = render_all(kubectl, work)
    check_names(rendered)
    check_probe_ports(rendered)
    check_schemas(rendered)
    return work
