"""Static checks of deploy/docker/Dockerfile, run by k8s_manifest_test.py.

Dockerfile (deploy/docker/Dockerfile):
  - bases are debian:bookworm*, the last stage runs as a non-root user;
  - every COPY source exists in the repository; every COPY --from source
    is a binary that the build stage builds with Bazel and copies out of
    bazel-bin, and the five binaries are all there;
  - the binaries' stage is FROM ${PSD_BINARIES} (a global ARG whose
    default is the build stage); the other choice, the stage "prebuilt"
    (FROM scratch), copies the build context's prebuilt/ to the same
    folder (tests/container_test.sh builds the runtime stage that way);
  - build stage packages: it runs deploy/install_deps.sh, and any package it
    apt-installs itself is in install_deps.sh's PACKAGES;
  - runtime stage packages ("runtime counterparts"): each is in PACKAGES
    or is a dependency, direct or not, of a package in PACKAGES (dpkg's
    database), and none is a -dev package; and every shared library that
    the five binaries load (readelf -d NEEDED) belongs (dpkg -S) to a
    package installed there or to the base image's libc6, libgcc-s1,
    libstdc++6. Without dpkg/readelf these two checks are skipped.
"""

import os
import re
import shutil
import subprocess

from static_check import (BASE_IMAGE_PACKAGES, BIN, BINARIES, BINARY_PATHS,
                          DOCKERFILE, note, problem)


def dockerfile_stages():
    """[(name, base, [(instruction, args)])], continuation lines joined; the
    global ARGs (before the first FROM) become a stage named None, base
    None, at the front when there are any."""
    with open(DOCKERFILE) as f:
        text = f.read()
    lines, cur = [], ""
    for raw in text.split("\n"):
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    stages = []
    for line in lines:
        ins, _, args = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            m = re.match(r"^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", args.strip(), re.I)
            stages.append((m.group(2), m.group(1), []))
        elif stages:
            stages[-1][2].append((ins, args.strip()))
        elif ins == "ARG":
            stages.append((None, None, [(ins, args.strip())]))
        else:
            problem("%s: %s before FROM" % (DOCKERFILE, ins))
    return stages


def repo_root():
    """The source tree (runfiles hold only the test's data: follow the
    Dockerfile's link back to the repository)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.realpath(DOCKERFILE))))
    if not os.path.exists(os.path.join(root, "WORKSPACE")):
        problem("cannot find the repository root from %s (got %s)" % (DOCKERFILE, root))
    return root


def install_deps_packages():
    text = open("deploy/install_deps.sh").read()
    m = re.search(r"PACKAGES=\((.*?)\)", text, re.S)
    return set(m.group(1).split())


def apt_installed(runs):
    pkgs = set()
    for run in runs:
        for m in re.finditer(r"apt-get\s+install\s+([^&;|]*)", run):
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def binaries_stage(stages, global_args):
    """Checks the PSD_BINARIES choice; returns {stage name: the stages its
    COPY --from may mean} for the stages based on an ARG."""
    names = {name for name, _, _ in stages}
    means = {}
    for name, base, st in stages:
        m = re.match(r"^\$\{?(\w+)\}?$", base)
        if not m:
            continue
        default = global_args.get(m.group(1))
        if default != "build" or "prebuilt" not in names:
            problem("%s: stage %s is FROM %s: want a global ARG %s=build and a "
                    "stage prebuilt" % (DOCKERFILE, name, base, m.group(1)))
        means[name] = ["build", "prebuilt"]
    return means


def check_prebuilt(stages, bin_dirs):
    """The prebuilt stage copies the context's prebuilt/ where the build
    stage puts the binaries."""
    for name, base, st in stages:
        if name != "prebuilt":
            continue
        copies = [a.split() for i, a in st if i == "COPY"]
        if base != "scratch" or len(st) != 1 or not copies or \
                copies[0][0] != "prebuilt/" or \
                copies[0][-1].rstrip("/") not in bin_dirs:
            problem("%s: stage prebuilt is not FROM scratch + COPY prebuilt/ %s"
                    % (DOCKERFILE, " or ".join(sorted(bin_dirs))))


def check_dockerfile():
    stages = dockerfile_stages()
    global_args = {}
    if stages and stages[0][0] is None:
        for _, args in stages.pop(0)[2]:
            k, _, v = args.partition("=")
            global_args[k] = v
    if len(stages) < 2:
        problem("%s: not a multi-stage build (%d stages)" % (DOCKERFILE, len(stages)))
        return None
    for name, base, _ in stages:
        if name == "prebuilt" and base == "scratch" or re.match(r"^\$\{?\w+\}?$", base):
            continue
        if not re.match(r"^debian:bookworm(-slim)?$", base):
            problem("%s: stage %s is based on %s, not debian:bookworm" % (DOCKERFILE, name, base))
    stage_names = {name for name, _, _ in stages}
    means = binaries_stage(stages, global_args)
    bin_dirs = set()
    build_name, _, build = stages[0]
    runtime_name, _, runtime = stages[-1]
    packages = install_deps_packages()

    # COPY sources.
    built_labels = set()
    for ins, args in [i for _, _, st in stages for i in st]:
        if ins == "RUN":
            built_labels |= set(re.findall(r"//[\w/]+:\w+", args))
    build_runs = " ".join(a for i, a in build if i == "RUN")
    for name, _, st in stages:
        for ins, args in st:
            if ins not in ("COPY", "ADD"):
                continue
            if ins == "ADD":
                problem("%s: use COPY, not ADD: %s" % (DOCKERFILE, args))
            words = args.split()
            opts = [w for w in words if w.startswith("--")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            frm = next((o.split("=", 1)[1] for o in opts if o.startswith("--from=")), None)
            for src in srcs:
                if frm is None and name == "prebuilt":
                    continue  # the build context's, not the repository's
                if frm is None:
                    if not os.path.exists(os.path.join(repo_root(), src)):
                        problem("%s: COPY source %s does not exist in the repository"
                                % (DOCKERFILE, src))
                    continue
                if frm not in stage_names:
                    problem("%s: COPY --from=%s: no such stage" % (DOCKERFILE, frm))
                    continue
                if frm in means:
                    bin_dirs.add(os.path.dirname(src))
                elif frm != build_name:
                    problem("%s: COPY --from=%s: neither the build stage nor the "
                            "binaries' stage" % (DOCKERFILE, frm))
                binary = os.path.basename(src.rstrip("/"))
                label = BINARIES.get(binary)
                if label is None or label not in built_labels:
                    problem("%s: COPY --from=%s %s: not a binary the build stage builds"
                            % (DOCKERFILE, frm, src))
                elif "bazel-bin/%s" % BINARY_PATHS[binary] not in build_runs or \
                        os.path.dirname(src) not in build_runs:
                    problem("%s: the build stage does not copy bazel-bin/%s to %s"
                            % (DOCKERFILE, BINARY_PATHS[binary], os.path.dirname(src)))
    check_prebuilt(stages, bin_dirs)
    copied = {os.path.basename(w) for i, a in runtime if i == "COPY" and "--from=" in a
              for w in a.split()[1:-1]}
    for b, label in BINARIES.items():
        if label not in built_labels:
            problem("%s: the build stage does not build %s" % (DOCKERFILE, label))
        if b not in copied:
            problem("%s: the runtime stage does not copy %s" % (DOCKERFILE, b))

    # Build stage packages.
    if "deploy/install_deps.sh" not in build_runs:
        problem("%s: the build stage does not run deploy/install_deps.sh" % DOCKERFILE)
    for p in sorted(apt_installed([a for i, a in build if i == "RUN"]) - packages):
        problem("%s: the build stage installs %s, which is not in "
                "deploy/install_deps.sh's PACKAGES" % (DOCKERFILE, p))

    # Runtime user.
    users = [a for i, a in runtime if i == "USER"]
    uid = None
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem("%s: the runtime stage does not switch to a non-root USER" % DOCKERFILE)
    elif users[-1].split(":")[0].isdigit():
        uid = int(users[-1].split(":")[0])

    # Runtime stage packages.
    runtime_pkgs = apt_installed([a for i, a in runtime if i == "RUN"])
    for p in sorted(runtime_pkgs):
        if p.endswith("-dev") or p in ("g++", "bazel-bootstrap", "protobuf-compiler"):
            problem("%s: the runtime stage installs the build package %s" % (DOCKERFILE, p))
    if not (shutil.which("dpkg-query") and shutil.which("dpkg") and shutil.which("readelf")):
        note("SKIP runtime package checks: no dpkg or readelf here")
        return uid
    closure = dependency_closure(packages)
    for p in sorted(runtime_pkgs - closure):
        problem("%s: runtime package %s is neither in deploy/install_deps.sh "
                "nor a dependency of one there" % (DOCKERFILE, p))
    needed = set()
    for b in BINARIES:
        out = subprocess.run(["readelf", "-d", os.path.join(BIN, BINARY_PATHS[b])],
                             stdout=subprocess.PIPE, universal_newlines=True).stdout
        needed |= set(re.findall(r"\(NEEDED\).*\[(.+)\]", out))
    # Under --config=asan/tsan the binaries also load a sanitizer runtime;
    # the image ships a normal build, which does not.
    needed = {s for s in needed if not re.match(r"lib(asan|ubsan|tsan|lsan)\.so", s)}
    owners = library_owners(needed)
    for soname in sorted(needed):
        owner = owners.get(soname)
        if owner is None:
            problem("no Debian package owns %s (needed by the binaries)" % soname)
        elif owner not in runtime_pkgs | BASE_IMAGE_PACKAGES:
            problem("%s: the runtime stage lacks %s (for %s, which the binaries load)"
                    % (DOCKERFILE, owner, soname))
    note("Dockerfile: %d stages; the binaries load %d libraries from %d packages; "
         "runtime installs %s" % (len(stages), len(needed), len(set(owners.values())),
                                  " ".join(sorted(runtime_pkgs))))
    return uid


def dependency_closure(roots):
    """roots and every package they depend on (installed ones, from dpkg)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\n"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        universal_newlines=True).stdout
    depends = {}
    for line in out.split("\n"):
        name, _, deps = line.partition("\t")
        names = set()
        for alt in deps.split(","):
            for dep in alt.split("|"):
                d = dep.strip().split(" ")[0].split(":")[0]
                if d:
                    names.add(d)
        depends[name] = names
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(depends.get(p, ()))
    return seen


def library_owners(sonames):
    """{soname: the Debian package that holds it} (one dpkg -S for all)."""
    out = subprocess.run(["ldconfig", "-p"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout if shutil.which("ldconfig") else ""
    candidates = {}  # path -> soname
    for soname in sonames:
        paths = [m.group(1) for m in re.finditer(
            r"^\s*%s \(.*\) => (\S+)$" % re.escape(soname), out, re.M)]
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"):
            paths.append(os.path.join(d, soname))
        for p in paths:
            for q in (p, os.path.realpath(p)):
                candidates[q] = soname
                if q.startswith("/usr/lib/"):
                    candidates[q[len("/usr"):]] = soname
                elif q.startswith("/lib/"):
                    candidates["/usr" + q] = soname
    r = subprocess.run(["dpkg", "-S"] + sorted(candidates), stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, universal_newlines=True)
    owners = {}
    for line in r.stdout.split("\n"):
        pkg, sep, path = line.partition(": ")
        if sep and path.strip() in candidates:
            owners.setdefault(candidates[path.strip()],
                              pkg.split(",")[0].split(":")[0].strip())
    return owners
