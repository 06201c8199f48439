"""Static checks of deploy/k8s (Kubernetes manifests) and deploy/docker.

Run by tests/k8s_manifest_test.sh with the repository root as the working
directory and BIN pointing at the built binaries. Prints every problem and
exits 1 if there is any.

Manifests (deploy/k8s/**/*.yaml):
  - every file parses as YAML; every object has apiVersion, kind and name;
    kustomization.yaml lists exactly the manifest files beside it;
  - every flag given to a psd binary exists in that binary's --help;
  - ports agree: --listen and --metrics_listen ports are containerPorts,
    --advertise uses the --listen port, the grpc probes probe the --listen
    port, every Service selects one workload and its targetPorts are that
    workload's containerPorts;
  - addresses in flags: --coordinator=NAME:PORT names a Service that selects
    the coordinator, on the port that reaches its --listen port; a server's
    --advertise is $(POD_NAME).<headless Service of its StatefulSet>.
    $(NAMESPACE).svc.cluster.local:PORT; every $(VAR) is set from the
    downward API; --data_dir is a mounted volume (a volumeClaimTemplate);
  - the submit Job's grpcurl dials a Service and port of the coordinator,
    calls an RPC that proto/ defines, reads a file mounted from the
    ConfigMap, whose job.json equals deploy/jobs/fashion_mnist_mlp.json;
  - every container has CPU and memory requests, psd containers grpc
    readiness and liveness probes and a non-root user (the Dockerfile's
    uid); workers request nvidia.com/gpu; the PodDisruptionBudget selects
    the servers.

The Dockerfile checks are in tests/dockerfile_check.py.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

from dockerfile_check import check_dockerfile
from static_check import (BIN, BINARIES, BINARY_PATHS, JOB_JSON, K8S,
                          WORKLOADS, note, problem, problems)


# ---------------------------------------------------------------- manifests


def load_manifests():
    objects = []  # (file, object)
    files = []
    for root, _, names in os.walk(K8S):
        for name in sorted(names):
            if name.endswith((".yaml", ".yml")):
                files.append(os.path.join(root, name))
    for path in sorted(files):
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            problem("%s: not YAML: %s" % (path, e))
            continue
        for d in docs:
            if not isinstance(d, dict):
                problem("%s: a document is not a mapping" % path)
                continue
            kind = d.get("kind")
            if kind in ("Kustomization", "Component"):
                continue
            for key in ("apiVersion", "kind"):
                if not d.get(key):
                    problem("%s: an object without %s" % (path, key))
            if not d.get("metadata", {}).get("name"):
                problem("%s: a %s without metadata.name" % (path, kind))
            objects.append((path, d))
    return files, objects


def check_kustomization(files):
    path = os.path.join(K8S, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f)
    listed = set(k.get("resources", []))
    beside = {os.path.basename(p) for p in files
              if os.path.dirname(p) == K8S and
              os.path.basename(p) != "kustomization.yaml"}
    for r in sorted(listed - beside):
        problem("%s lists %s, which is not a manifest in %s" % (path, r, K8S))
    for r in sorted(beside - listed):
        problem("%s does not list %s" % (path, r))
    names = {i.get("name") for i in k.get("images", [])}
    return names


def help_flags(binary):
    out = subprocess.run([os.path.join(BIN, BINARY_PATHS[binary]), "--help"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True).stdout
    flags = set(re.findall(r"^\s+--([a-z0-9_]+) \(", out, re.M))
    if not flags:
        problem("%s --help lists no flags:\n%s" % (binary, out))
    return flags


def parse_flags(argv):
    flags = {}
    for a in argv:
        m = re.match(r"^--([A-Za-z0-9_]+)(?:=(.*))?$", a)
        if m:
            flags[m.group(1)] = m.group(2) if m.group(2) is not None else ""
    return flags


def port_of(address):
    m = re.match(r"^(.*):(\d+)$", address or "")
    return (m.group(1), int(m.group(2))) if m else (None, None)


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v
                                  for k, v in selector.items())


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def pod_labels(obj):
    return obj["spec"]["template"].get("metadata", {}).get("labels", {})


def container_port(container, target):
    """The containerPort that a Service targetPort (number or name) means."""
    for p in container.get("ports", []):
        if target == p.get("name") or target == p.get("containerPort"):
            return p.get("containerPort")
    return None


def check_manifests(objects, image_names, dockerfile_uid):
    by_kind = {}
    for path, o in objects:
        by_kind.setdefault(o["kind"], []).append((path, o))
    workloads = [(p, o) for p, o in objects if o["kind"] in WORKLOADS]
    services = {o["metadata"]["name"]: (p, o) for p, o in by_kind.get("Service", [])}
    configmaps = {o["metadata"]["name"]: o for _, o in by_kind.get("ConfigMap", [])}
    helps = {b: help_flags(b) for b in BINARIES}

    # Which workload each Service selects, and its ports.
    selected = {}  # service name -> workload object
    for name, (path, svc) in services.items():
        sel = svc["spec"].get("selector", {})
        hits = [o for _, o in workloads if labels_match(sel, pod_labels(o))]
        if len(hits) != 1:
            problem("%s: Service %s selects %d workloads, expected 1"
                    % (path, name, len(hits)))
            continue
        selected[name] = hits[0]
        containers = pod_spec(hits[0])["containers"]
        for sp in svc["spec"].get("ports", []):
            target = sp.get("targetPort", sp.get("port"))
            if not any(container_port(c, target) for c in containers):
                problem("%s: Service %s port %s: targetPort %r is no "
                        "containerPort of %s" % (path, name, sp.get("port"),
                                                 target, hits[0]["metadata"]["name"]))

    def service_port_reaches(svc_name, port, listen_port):
        svc = services[svc_name][1]
        w = selected.get(svc_name)
        for sp in svc["spec"].get("ports", []):
            if sp.get("port") != port:
                continue
            target = sp.get("targetPort", sp.get("port"))
            return w is not None and any(
                container_port(c, target) == listen_port
                for c in pod_spec(w)["containers"])
        return False

    # The coordinator's --listen port (the workload whose container runs it).
    coordinator = None
    for _, o in workloads:
        for c in pod_spec(o)["containers"]:
            if c.get("command", [""])[0] == "psd_coordinator":
                coordinator = (o, port_of(parse_flags(c["command"]).get("listen"))[1])
    if coordinator is None:
        problem("no workload runs psd_coordinator")

    binaries_seen = set()
    for path, o in workloads:
        name = o["metadata"]["name"]
        spec = pod_spec(o)
        where = "%s: %s %s" % (path, o["kind"], name)
        sc = spec.get("securityContext", {})
        for c in spec["containers"]:
            cw = "%s container %s" % (where, c["name"])
            req = c.get("resources", {}).get("requests", {})
            for r in ("cpu", "memory"):
                if r not in req:
                    problem("%s: no %s request" % (cw, r))
            argv = list(c.get("command", [])) + list(c.get("args", []))
            if not argv or argv[0] not in BINARIES:
                continue
            binary = argv[0]
            binaries_seen.add(binary)
            image = c.get("image", "").split(":")[0]
            if image not in image_names:
                problem("%s: image %r is not the kustomization's psd image %s"
                        % (cw, c.get("image"), sorted(image_names)))
            user = c.get("securityContext", {}).get("runAsUser", sc.get("runAsUser"))
            if not sc.get("runAsNonRoot") or user in (None, 0):
                problem("%s: not set to run as a non-root user" % cw)
            if dockerfile_uid is not None and user != dockerfile_uid:
                problem("%s: runAsUser %s, the image's user is %s"
                        % (cw, user, dockerfile_uid))
            flags = parse_flags(argv[1:])
            for a in argv[1:]:
                if not a.startswith("--"):
                    problem("%s: argument %r is not a --flag" % (cw, a))
            for f in flags:
                if f not in helps[binary]:
                    problem("%s: %s has no flag --%s (its --help: %s)"
                            % (cw, binary, f, " ".join(sorted(helps[binary]))))
            # $(VAR) in flags come from the downward API.
            env = {e["name"]: e for e in c.get("env", [])}
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)):
                if "fieldRef" not in env.get(var, {}).get("valueFrom", {}):
                    problem("%s: $(%s) is not set from the downward API" % (cw, var))
            ports = {p.get("containerPort"): p.get("name") for p in c.get("ports", [])}
            _, listen_port = port_of(flags.get("listen"))
            if listen_port is None:
                problem("%s: no --listen=HOST:PORT" % cw)
            elif ports.get(listen_port) != "grpc":
                problem("%s: --listen port %s is not the containerPort named grpc"
                        % (cw, listen_port))
            if "metrics_listen" in flags:
                mp = port_of(flags["metrics_listen"])[1]
                if ports.get(mp) != "metrics":
                    problem("%s: --metrics_listen port %s is not the "
                            "containerPort named metrics" % (cw, mp))
            for probe in ("readinessProbe", "livenessProbe"):
                g = c.get(probe, {}).get("grpc")
                if not g:
                    problem("%s: no grpc %s" % (cw, probe))
                elif g.get("port") != listen_port:
                    problem("%s: %s probes port %s, --listen is %s"
                            % (cw, probe, g.get("port"), listen_port))
            if "advertise" in flags:
                host, ap = port_of(flags["advertise"])
                if ap != listen_port:
                    problem("%s: --advertise port %s is not the --listen port %s"
                            % (cw, ap, listen_port))
                if o["kind"] == "StatefulSet":
                    want = ("$(POD_NAME).%s.$(NAMESPACE).svc.cluster.local"
                            % o["spec"].get("serviceName"))
                    if host != want:
                        problem("%s: --advertise host %s, expected %s"
                                % (cw, host, want))
                    svc = services.get(o["spec"].get("serviceName"))
                    if svc is None:
                        problem("%s: serviceName %s is no Service"
                                % (where, o["spec"].get("serviceName")))
                    else:
                        if svc[1]["spec"].get("clusterIP") != "None":
                            problem("%s: Service %s is not headless"
                                    % (where, o["spec"]["serviceName"]))
                        if selected.get(o["spec"]["serviceName"]) is not o:
                            problem("%s: Service %s does not select it"
                                    % (where, o["spec"]["serviceName"]))
                        if not service_port_reaches(o["spec"]["serviceName"], ap, listen_port):
                            problem("%s: --advertise port %s is not a port of "
                                    "Service %s" % (cw, ap, o["spec"]["serviceName"]))
                elif not host.startswith("$("):
                    problem("%s: --advertise host %s is not from the downward API"
                            % (cw, host))
            if "coordinator" in flags:
                host, cp = port_of(flags["coordinator"])
                svc_name = (host or "").split(".")[0]
                if svc_name not in services:
                    problem("%s: --coordinator=%s: no Service %s"
                            % (cw, flags["coordinator"], svc_name))
                elif coordinator and selected.get(svc_name) is not coordinator[0]:
                    problem("%s: Service %s does not select the coordinator"
                            % (cw, svc_name))
                elif coordinator and not service_port_reaches(svc_name, cp, coordinator[1]):
                    problem("%s: --coordinator port %s does not reach the "
                            "coordinator's --listen port %s" % (cw, cp, coordinator[1]))
            if "data_dir" in flags and binary != "psd_worker":
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                claims = {t["metadata"]["name"]
                          for t in o["spec"].get("volumeClaimTemplates", [])}
                if mounts.get(flags["data_dir"]) not in claims:
                    problem("%s: --data_dir %s is not a mounted volumeClaimTemplate"
                            % (cw, flags["data_dir"]))
            if binary == "psd_coordinator" and o["spec"].get("replicas") != 1:
                problem("%s: the coordinator must have exactly 1 replica" % where)
            if binary == "psd_worker":
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    if "nvidia.com/gpu" not in res.get(part, {}):
                        problem("%s: no nvidia.com/gpu in %s" % (cw, part))
                with open(JOB_JSON) as f:
                    want_workers = json.load(f)["workers"]
                if o["spec"].get("replicas", 1) < want_workers:
                    problem("%s: %s replicas, the job needs %d workers"
                            % (where, o["spec"].get("replicas"), want_workers))
    for b in ("psd_coordinator", "psd_server", "psd_worker"):
        if b not in binaries_seen:
            problem("no workload runs %s" % b)

    # The submit Job: grpcurl to the coordinator, with the ConfigMap's job.
    submits = 0
    for path, o in workloads:
        for c in pod_spec(o)["containers"]:
            if not c.get("image", "").startswith("fullstorydev/grpcurl"):
                continue
            submits += 1
            cw = "%s: container %s" % (path, c["name"])
            script = " ".join(c.get("command", [])[2:] + c.get("args", []))
            words = shlex.split(script)
            if not words or words[0] != "grpcurl":
                problem("%s: does not run grpcurl: %r" % (cw, script))
                continue
            addr = next((w for w in words if re.match(r"^[a-z0-9.-]+:\d+$", w)), None)
            method = next((w for w in words if re.match(r"^[\w.]+/\w+$", w)), None)
            host, port = port_of(addr)
            svc_name = (host or "").split(".")[0]
            if svc_name not in services:
                problem("%s: dials %s: no such Service" % (cw, addr))
            elif coordinator and not service_port_reaches(svc_name, port, coordinator[1]):
                problem("%s: %s does not reach the coordinator" % (cw, addr))
            if method is None or not rpc_exists(method):
                problem("%s: calls %s, which proto/ does not define" % (cw, method))
            m = re.search(r"<\s*(\S+)", script)
            if not m or "-d" not in words or words[words.index("-d") + 1] != "@":
                problem("%s: does not send a file with -d @ < FILE" % cw)
                continue
            data_file = m.group(1)
            mounts = {mm["mountPath"]: mm["name"] for mm in c.get("volumeMounts", [])}
            vols = {v["name"]: v for v in pod_spec(o).get("volumes", [])}
            mdir, key = os.path.split(data_file)
            cm_name = vols.get(mounts.get(mdir), {}).get("configMap", {}).get("name")
            if cm_name not in configmaps:
                problem("%s: %s is not mounted from a ConfigMap of these manifests"
                        % (cw, data_file))
                continue
            text = configmaps[cm_name].get("data", {}).get(key)
            if text is None:
                problem("ConfigMap %s has no key %s" % (cm_name, key))
                continue
            with open(JOB_JSON) as f:
                if json.loads(text) != json.load(f):
                    problem("ConfigMap %s %s differs from %s" % (cm_name, key, JOB_JSON))
    if submits != 1:
        problem("expected 1 grpcurl submit container, found %d" % submits)

    # The PodDisruptionBudget protects the servers.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    servers = [o for _, o in workloads
               if any(c.get("command", [""])[0] == "psd_server"
                      for c in pod_spec(o)["containers"])]
    if not any(servers and labels_match(p["spec"]["selector"].get("matchLabels", {}),
                                        pod_labels(servers[0])) for _, p in pdbs):
        problem("no PodDisruptionBudget selects the servers")
    note("%d objects, %d Services, %d workloads checked"
         % (len(objects), len(services), len(workloads)))


def rpc_exists(method):
    service, rpc = method.rsplit("/", 1)
    package, _, sname = service.rpartition(".")
    for root, _, names in os.walk("proto"):
        for n in names:
            if not n.endswith(".proto"):
                continue
            text = open(os.path.join(root, n)).read()
            if not re.search(r"^package\s+%s\s*;" % re.escape(package), text, re.M):
                continue
            m = re.search(r"service\s+%s\s*\{(.*?)^\}" % re.escape(sname), text, re.S | re.M)
            if m and re.search(r"\brpc\s+%s\s*\(" % re.escape(rpc), m.group(1)):
                return True
    return False


def check_kustomize_build():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        note("SKIP kustomize build: no kubectl on PATH (Debian's "
             "kubernetes-client package has it)")
        return
    # kustomize reads regular files only: copy the runfiles' links.
    tmp = os.environ.get("TEST_TMPDIR", "/tmp")
    work = os.path.join(tmp, "psd-kustomize")
    shutil.rmtree(work, ignore_errors=True)
    base = os.path.join(work, "deploy", "k8s")
    shutil.copytree(K8S, base, symlinks=False)
    r = subprocess.run([kubectl, "kustomize", base], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        problem("kubectl kustomize %s failed: %s" % (K8S, r.stderr))
    else:
        built = [d for d in yaml.safe_load_all(r.stdout) if d]
        note("kubectl kustomize %s: %d objects" % (K8S, len(built)))
    # The cpu-only Component, from an overlay outside deploy/k8s.
    overlay = os.path.join(work, "overlay")
    os.makedirs(overlay)
    with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
        f.write("resources: [../deploy/k8s]\ncomponents: [../deploy/k8s/cpu-only]\n")
    r = subprocess.run([kubectl, "kustomize", overlay], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        problem("kubectl kustomize with the cpu-only Component failed: %s" % r.stderr)
    elif "nvidia.com/gpu" in r.stdout:
        problem("the cpu-only Component leaves nvidia.com/gpu requests")
    else:
        note("kubectl kustomize with the cpu-only Component: no GPU requests")


def main():
    uid = check_dockerfile()
    files, objects = load_manifests()
    note("%d YAML files parsed" % len(files))
    images = check_kustomization(files)
    check_manifests(objects, images, uid)
    check_kustomize_build()
    if problems:
        print("FAIL: %d problems" % len(problems))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
