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
  - every container has CPU and memory requests, psd containers a non-root
    user (the Dockerfile's uid); workers request nvidia.com/gpu, have a
    preStop hook that sends them SIGTERM and a terminationGracePeriodSeconds
    above their --leave_timeout_ms; the PodDisruptionBudget selects the
    servers.

Transport security (mutual TLS from Secrets):
  - no psd container runs --insecure; each gives --tls_ca_file,
    --tls_cert_file and --tls_key_file as ca.crt, tls.crt and tls.key of one
    mounted secret volume (a whole volume: no subPath, which the kubelet
    never updates), readable by the container's user;
  - readiness and liveness probes are exec probes running psd_ctl (in the
    image) `health 127.0.0.1:<--listen port>` with the container's own
    --tls_* files and flags psd_ctl --help lists, with a timeout above
    psd_ctl's --timeout_s; no grpc: probe (it speaks no TLS);
  - the submit Job's grpcurl presents -cacert/-cert/-key from a mounted
    secret volume, not -plaintext;
  - every mounted Secret is made both by cert-manager/ (a Certificate whose
    secretName it is, issued by an Issuer there) and by README.md's
    commands (its ```sh block with make_certs.sh, run with a stand-in
    kubectl that records the Secrets), with the identity (URI SAN) its
    workload needs: coordinator, server, worker, user or admin for the
    grpcurl Job; the host name grpcurl dials is a DNS name of both
    coordinator certificates; the cert-manager Component builds with
    kubectl kustomize.

Rendered (tests/k8s_render_check.py): every kustomization with kubectl
kustomize, validated against the Kubernetes schemas (kubernetes-models),
names the API server would refuse, probe ports no container declares.

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
from k8s_render_check import check_rendered, kustomize
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


def help_flags(binary, option="--help"):
    out = subprocess.run([os.path.join(BIN, BINARY_PATHS[binary]), option],
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
            check_tls_container(cw, binary, c, spec, flags, listen_port)
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
                # Preemption (issue 16): the worker's leave on SIGTERM fits
                # in the grace period, and a preStop hook asks for it.
                grace = o["spec"]["template"]["spec"].get(
                    "terminationGracePeriodSeconds", 30)
                leave_s = int(flags.get("leave_timeout_ms", "20000")) / 1000
                if grace < leave_s + 5:
                    problem("%s: terminationGracePeriodSeconds %s leaves no room "
                            "for --leave_timeout_ms (%g s) and the drain"
                            % (where, grace, leave_s))
                pre_stop = c.get("lifecycle", {}).get("preStop", {})
                if "kill -TERM 1" not in " ".join(
                        pre_stop.get("exec", {}).get("command", [])):
                    problem("%s: no preStop hook that sends the worker SIGTERM"
                            % cw)
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
            check_grpcurl_tls(cw, c, pod_spec(o), words)
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


# ------------------------------------------------------- transport security

# The file each --tls_* flag (and grpcurl option) names, in a Secret of the
# kubernetes.io/tls layout with ca.crt (what cert-manager writes).
TLS_KEYS = {"tls_ca_file": "ca.crt", "tls_cert_file": "tls.crt",
            "tls_key_file": "tls.key"}
GRPCURL_KEYS = {"-cacert": "ca.crt", "-cert": "tls.crt", "-key": "tls.key"}
ROLE_OF_BINARY = {"psd_coordinator": "coordinator", "psd_server": "server",
                  "psd_worker": "worker",
                  # psd_serve has a role of its own (common/authorization.h).
                  "psd_serve": "serve"}

# psd_serve's OIP health endpoints over HTTPS (server/serving/README.md):
# they need no client certificate, so the kubelet's httpGet probe works.
SERVE_HEALTH_PATHS = {"readinessProbe": "/v2/health/ready",
                      "livenessProbe": "/v2/health/live"}


def check_https_health_probe(cw, probe, p, flags):
    """An httpGet probe of psd_serve: HTTPS, an OIP health path, and the
    port the process serves HTTP on (--http_listen)."""
    get = p.get("httpGet", {})
    if get.get("scheme") != "HTTPS":
        problem("%s: %s is not HTTPS (psd_serve serves HTTPS under TLS)" % (cw, probe))
    if get.get("path") != SERVE_HEALTH_PATHS[probe]:
        problem("%s: %s path %r, expected %s"
                % (cw, probe, get.get("path"), SERVE_HEALTH_PATHS[probe]))
    http_port = str(flags.get("http_listen", "")).rpartition(":")[2]
    if str(get.get("port")) != http_port:
        problem("%s: %s port %r is not --http_listen's %r"
                % (cw, probe, get.get("port"), http_port))

# Secret name -> (roles it may hold, where it is mounted, the DNS name it
# must carry or None), filled by the workload checks.
mounted_secrets = {}


def secret_of_files(cw, container, spec, files):
    """The Secret whose whole volume holds `files` {path: key}, or None."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    secrets = set()
    checked = set()  # volume names, each checked once
    for path, key in files.items():
        mdir, base = os.path.split(path or "")
        if base != key:
            problem("%s: %s is not the Secret key %s" % (cw, path, key))
        mounts = [m for m in container.get("volumeMounts", [])
                  if m.get("mountPath") == mdir]
        if not mounts:
            problem("%s: %s is in no mounted volume" % (cw, path))
            continue
        m = mounts[0]
        vol = vols.get(m["name"], {})
        secret = vol.get("secret", {})
        if m["name"] in checked:
            secrets.add(secret.get("secretName"))
            continue
        checked.add(m["name"])
        if m.get("subPath") or m.get("subPathExpr"):
            problem("%s: %s is mounted with subPath, which the kubelet never "
                    "updates (a renewed Secret would not reach it)" % (cw, mdir))
        if not secret.get("secretName"):
            problem("%s: %s is not mounted from a Secret" % (cw, path))
            continue
        if secret.get("items"):
            problem("%s: the Secret volume %s lists items: mount it whole"
                    % (cw, m["name"]))
        mode = secret.get("defaultMode", 0o644)
        sc = spec.get("securityContext", {})
        if not (mode & 0o004 or (mode & 0o040 and sc.get("fsGroup") is not None
                                 and sc.get("fsGroup") == sc.get("runAsGroup"))):
            problem("%s: the Secret %s (mode %o) is not readable by the "
                    "container's user (fsGroup %s)" % (cw, secret["secretName"],
                                                      mode, sc.get("fsGroup")))
        secrets.add(secret["secretName"])
    if len(secrets) != 1:
        problem("%s: the TLS files come from %d Secrets, not 1" % (cw, len(secrets)))
        return None
    return secrets.pop()


def note_secret(name, roles, where, dns=None):
    if name is None:
        return
    had = mounted_secrets.get(name)
    if had and had[0] != roles:
        problem("the Secret %s is mounted by %s and %s, which need different "
                "identities" % (name, had[1], where))
    mounted_secrets[name] = (roles, where, dns or (had[2] if had else None))


def check_tls_container(cw, binary, c, spec, flags, listen_port):
    if "insecure" in flags:
        problem("%s: runs --insecure (plaintext)" % cw)
    files = {}
    for flag, key in TLS_KEYS.items():
        if flag not in flags:
            problem("%s: no --%s" % (cw, flag))
        else:
            files[flags[flag]] = key
    secret = secret_of_files(cw, c, spec, files) if len(files) == 3 else None
    note_secret(secret, {ROLE_OF_BINARY[binary]}, cw)
    # psd_ctl's --help shows its own flags only; --helpfull has the --tls_*.
    ctl_help = help_flags("psd_ctl", "--helpfull")
    for probe in ("readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            problem("%s: no %s" % (cw, probe))
            continue
        if binary == "psd_serve" and "httpGet" in p:
            check_https_health_probe(cw, probe, p, flags)
            continue
        if "grpc" in p or "tcpSocket" in p or "httpGet" in p:
            problem("%s: %s is not an exec probe (the grpc: probe speaks no "
                    "TLS)" % (cw, probe))
            continue
        argv = p.get("exec", {}).get("command", [])
        if not argv or argv[0] != "psd_ctl":
            problem("%s: %s does not run psd_ctl: %r" % (cw, probe, argv))
            continue
        pflags = parse_flags(argv[1:])
        rest = [a for a in argv[1:] if not a.startswith("--")]
        for f in pflags:
            if f not in ctl_help:
                problem("%s: %s: psd_ctl has no flag --%s" % (cw, probe, f))
        for f in TLS_KEYS:
            if pflags.get(f) != flags.get(f):
                problem("%s: %s: --%s=%s, the process has %s"
                        % (cw, probe, f, pflags.get(f), flags.get(f)))
        want = ["health", "127.0.0.1:%s" % listen_port]
        if rest != want:
            problem("%s: %s runs psd_ctl %s, expected %s"
                    % (cw, probe, " ".join(rest), " ".join(want)))
        deadline = int(pflags.get("timeout_s", "60") or 60)
        if p.get("timeoutSeconds", 1) <= deadline:
            problem("%s: %s timeoutSeconds %s is not above psd_ctl's "
                    "--timeout_s=%s" % (cw, probe, p.get("timeoutSeconds", 1),
                                        deadline))
    if not psd_ctl_in_image():
        problem("%s: the probes run psd_ctl, which the image does not hold" % cw)


def psd_ctl_in_image():
    from dockerfile_check import dockerfile_stages
    stages = dockerfile_stages()
    return bool(stages) and any(
        ins == "COPY" and "--from=" in args and "psd_ctl" in args
        for ins, args in stages[-1][2])


def check_grpcurl_tls(cw, c, spec, words):
    if "-plaintext" in words or "-insecure" in words:
        problem("%s: grpcurl runs -plaintext or -insecure" % cw)
    files = {}
    for opt, key in GRPCURL_KEYS.items():
        if opt not in words or words.index(opt) + 1 >= len(words):
            problem("%s: grpcurl has no %s FILE" % (cw, opt))
        else:
            files[words[words.index(opt) + 1]] = key
    secret = secret_of_files(cw, c, spec, files) if len(files) == 3 else None
    addr = next((w for w in words if re.match(r"^[a-z0-9.-]+:\d+$", w)), None)
    if "-servername" in words:
        host = words[words.index("-servername") + 1]
    else:
        host = port_of(addr)[0]
    note_secret(secret, {"user", "admin"}, cw)
    # grpcurl checks the coordinator's certificate for the name it dials.
    coordinator_secret = next((n for n, (roles, _, _) in mounted_secrets.items()
                               if roles == {"coordinator"}), None)
    if coordinator_secret:
        roles, where, _ = mounted_secrets[coordinator_secret]
        mounted_secrets[coordinator_secret] = (roles, where, host)


def san_of(pem_path):
    """(URIs, DNS names) of a PEM certificate, with openssl."""
    r = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName",
                        "-in", pem_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    if r.returncode != 0:
        problem("openssl cannot read %s: %s" % (pem_path, r.stdout))
        return [], []
    return (re.findall(r"URI:([^,\s]+)", r.stdout),
            re.findall(r"DNS:([^,\s]+)", r.stdout))


def role_of(uris):
    roles = set()
    for u in uris:
        m = re.match(r"^spiffe://psd/(coordinator|server|worker|user|admin|serve)"
                     r"(?:/([A-Za-z0-9._:-]+))?$", u)
        if m and (m.group(2) or m.group(1) not in ("user", "admin")):
            roles.add(m.group(1))
    return roles


def cert_manager_secrets(objects):
    """secretName -> (URIs, DNS names) of the Certificates in cert-manager/."""
    made = {}
    issuers = {o["metadata"]["name"] for _, o in objects
               if o["kind"] in ("Issuer", "ClusterIssuer")}
    for path, o in objects:
        if o["kind"] != "Certificate":
            continue
        spec = o.get("spec", {})
        ref = spec.get("issuerRef", {}).get("name")
        if ref not in issuers:
            problem("%s: Certificate %s: issuer %s is not in %s"
                    % (path, o["metadata"]["name"], ref, os.path.dirname(path)))
        if spec.get("isCA"):
            continue
        for k in ("duration", "renewBefore"):
            if k not in spec:
                problem("%s: Certificate %s has no %s"
                        % (path, o["metadata"]["name"], k))
        made[spec.get("secretName")] = (spec.get("uris", []),
                                        spec.get("dnsNames", []))
    return made


def readme_secrets():
    """secretName -> (URIs, DNS names): README.md's ```sh block that runs
    make_certs.sh, run in a scratch folder with a kubectl that records the
    Secrets it would create; the certificates read with openssl."""
    if not shutil.which("openssl"):
        note("SKIP the README's Secret commands: no openssl")
        return None
    with open(os.path.join(K8S, "README.md")) as f:
        blocks = re.findall(r"^```sh\n(.*?)^```", f.read(), re.S | re.M)
    block = next((b for b in blocks if "make_certs.sh" in b), None)
    if block is None:
        problem("%s/README.md: no ```sh block runs make_certs.sh" % K8S)
        return {}
    tmp = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "psd-secrets")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "bin"))
    os.symlink(os.path.abspath("deploy"), os.path.join(tmp, "deploy"))
    with open(os.path.join(tmp, "bin", "kubectl"), "w") as f:
        f.write('#!/bin/sh\nprintf "%s\\n" "$@" >>"$KUBECTL_LOG"\n'
                'echo "--" >>"$KUBECTL_LOG"\n')
    os.chmod(os.path.join(tmp, "bin", "kubectl"), 0o755)
    log = os.path.join(tmp, "kubectl.log")
    env = dict(os.environ, KUBECTL_LOG=log,
               PATH=os.path.join(tmp, "bin") + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp,
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if r.returncode != 0:
        problem("README.md's Secret commands failed: %s" % r.stdout)
        return {}
    made = {}
    calls = open(log).read().split("--\n") if os.path.exists(log) else []
    for call in calls:
        args = call.split("\n")
        if "create" not in args or "secret" not in args:
            continue
        i = args.index("secret")
        name = args[i + 2] if args[i + 1] == "generic" else None
        files = dict(a[len("--from-file="):].split("=", 1) for a in args
                     if a.startswith("--from-file=") and "=" in a[len("--from-file="):])
        if "--type=kubernetes.io/tls" not in args or set(files) != {"ca.crt", "tls.crt", "tls.key"}:
            problem("README.md: kubectl %s: not a kubernetes.io/tls Secret "
                    "with ca.crt, tls.crt, tls.key" % " ".join(args))
            continue
        for key, rel in files.items():
            if not os.path.isfile(os.path.join(tmp, rel)):
                problem("README.md: Secret %s: %s=%s was not made"
                        % (name, key, rel))
        made[name] = san_of(os.path.join(tmp, files["tls.crt"]))
        # The key must be that of the certificate.
        pub = [subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout for cmd in (
            ["openssl", "x509", "-noout", "-pubkey", "-in", os.path.join(tmp, files["tls.crt"])],
            ["openssl", "pkey", "-pubout", "-in", os.path.join(tmp, files["tls.key"])])]
        if not pub[0] or pub[0] != pub[1]:
            problem("README.md: Secret %s: tls.key is not the key of tls.crt" % name)
        ok = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(tmp, files["ca.crt"]),
                             os.path.join(tmp, files["tls.crt"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if ok.returncode != 0:
            problem("README.md: Secret %s: tls.crt is not signed by ca.crt" % name)
    return made


def check_secrets(objects):
    """Every mounted Secret is made by cert-manager/ and by the README, with
    the identity its workload needs."""
    sources = [("cert-manager/", cert_manager_secrets(objects)),
               ("README.md's commands", readme_secrets())]
    for source, made in sources:
        if made is None:
            continue
        for name, (roles, where, dns) in sorted(mounted_secrets.items()):
            if name not in made:
                problem("%s: the Secret %s is not made by %s" % (where, name, source))
                continue
            uris, dnsnames = made[name]
            got = role_of(uris)
            if len(got) != 1 or not got <= roles:
                problem("%s: the Secret %s from %s holds %s, it needs the role %s"
                        % (where, name, source, uris or "no URI", " or ".join(sorted(roles))))
            if dns and dns not in dnsnames:
                problem("Secret %s from %s: grpcurl checks the name %s, the "
                        "certificate has %s" % (name, source, dns, dnsnames))
        note("made by %s: the %d mounted Secrets (%s), with the right identities"
             % (source, len(mounted_secrets), ", ".join(sorted(mounted_secrets))))
    if len(mounted_secrets) < 4:
        problem("%d Secrets mounted, expected 4 (coordinator, server, worker, "
                "submit)" % len(mounted_secrets))


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
    # Every kustomization rendered, schema-validated and name-checked
    # (k8s_render_check.py); then both Components together.
    work = check_rendered()
    if work is None:
        return
    overlay = os.path.join(work, "overlay")
    os.makedirs(overlay)
    with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
        # deploy/k8s/serving (psd_serve) beside the cluster: it brings its
        # own Certificate, from the cert-manager Component's Issuer.
        f.write("resources: [../deploy/k8s, ../deploy/k8s/serving]\ncomponents: "
                "[../deploy/k8s/cert-manager, ../deploy/k8s/cpu-only]\n")
    built, err = kustomize(shutil.which("kubectl"), overlay)
    if err is not None:
        problem("kubectl kustomize with the cert-manager and cpu-only "
                "Components failed: %s" % err)
        return
    if "nvidia.com/gpu" in json.dumps(built):
        problem("the cpu-only Component leaves nvidia.com/gpu requests")
    else:
        note("kubectl kustomize with the cpu-only Component: no GPU requests")
    made = {d["spec"].get("secretName") for d in built if d["kind"] == "Certificate"}
    for name in sorted(set(mounted_secrets) - made):
        problem("kubectl kustomize with the cert-manager Component: no "
                "Certificate makes the Secret %s" % name)
    note("kubectl kustomize with the cert-manager Component: %d Certificates"
         % len(made))


def main():
    uid = check_dockerfile()
    files, objects = load_manifests()
    note("%d YAML files parsed" % len(files))
    images = check_kustomization(files)
    check_manifests(objects, images, uid)
    check_secrets(objects)
    check_kustomize_build()
    if problems:
        print("FAIL: %d problems" % len(problems))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
