#!/usr/bin/env bash
# Every process serves Prometheus text metrics (--metrics_listen): scraped
# before, during and after a short job on a coordinator + 2 servers + 2
# workers, the output parses as the text exposition format 0.0.4 and the
# push/pull and step counters increase. A metrics port in use is an error.
source tests/cluster_lib.sh

for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker; do
  "$BIN/$b" --help >"$WORK/help" 2>&1 || true
  for f in --metrics_listen --metrics_port_file; do
    grep -q -- "$f" "$WORK/help" || fail "$b --help lacks $f"
  done
done

# promcheck.py, a checker of the text exposition format 0.0.4:
#   selftest: the checker catches a broken exposition;
#   scrape PREFIX NAME=URL...: scrapes and checks each URL, and writes its
#     samples as {"name{labels}": value} to PREFIX.NAME.json;
#   during WORKER_URL MAX_STEPS PREFIX NAME=URL...: polls the worker until
#     it has done between 1 and MAX_STEPS steps, then scrapes like `scrape`.
cat >"$WORK/promcheck.py" <<'PY'
import json, math, re, sys, time, urllib.request

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*,?)?\})? (\S+)(?: (-?\d+))?$"
                    % (NAME, LABEL, LABEL))
VALUE = re.compile(r"^(?:[+-]?Inf|NaN|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$")


def problems_in(text):
    """The text format's rules that `text` breaks, and its samples."""
    problems, samples, types, helps = [], {}, {}, set()
    if not text.endswith("\n"):
        problems.append("no final newline")
    family = None  # (name, type) of the last # TYPE
    buckets, counts = {}, {}  # histogram -> [(le, count)], _count
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d %r" % (n, line)
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.*)$" % NAME, line)
            if not m:
                continue  # a plain comment
            kind, name, rest = m.groups()
            if kind == "HELP":
                if name in helps:
                    problems.append("second HELP: " + where)
                helps.add(name)
                continue
            if rest not in ("counter", "gauge", "histogram", "summary", "untyped"):
                problems.append("bad TYPE: " + where)
            if name in types:
                problems.append("second TYPE: " + where)
            types[name] = rest
            family = (name, rest)
            continue
        m = SAMPLE.match(line)
        if not m or not VALUE.match(m.group(3)):
            problems.append("not a sample: " + where)
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        key = name + ("{%s}" % labels if labels else "")
        if key in samples:
            problems.append("duplicate sample: " + where)
        samples[key] = value
        if family is None:
            problems.append("sample before any TYPE: " + where)
            continue
        fname, ftype = family
        if ftype == "histogram":
            if name == fname + "_bucket":
                le = re.search(r'le="([^"]*)"', labels)
                if le:
                    buckets.setdefault(fname, []).append((float(le.group(1)), value))
                else:
                    problems.append("bucket without le: " + where)
            elif name == fname + "_count":
                counts[fname] = value
            elif name != fname + "_sum":
                problems.append("sample outside its histogram: " + where)
        elif name != fname:
            problems.append("sample outside its family %s: %s" % (fname, where))
        if ftype == "counter" and not fname.endswith("_total"):
            problems.append("counter name without _total: " + where)
        if ftype == "counter" and value < 0:
            problems.append("negative counter: " + where)
        if not fname.startswith(("psd_", "process_")):
            problems.append("name not psd_* or process_*: " + where)
    for name, kind in types.items():
        if name not in helps:
            problems.append("no HELP for " + name)
        if kind != "histogram":
            continue
        b = buckets.get(name, [])
        if not b or not math.isinf(b[-1][0]):
            problems.append(name + ": no +Inf bucket")
            continue
        if any(b[i][0] >= b[i + 1][0] for i in range(len(b) - 1)):
            problems.append(name + ": le not increasing")
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            problems.append(name + ": bucket counts not cumulative")
        if counts.get(name) != b[-1][1]:
            problems.append("%s: _count %s != +Inf bucket %s"
                            % (name, counts.get(name), b[-1][1]))
    for p in ("process_cpu_seconds_total", "process_resident_memory_bytes",
              "process_open_fds", "process_start_time_seconds"):
        if p not in samples:
            problems.append("missing " + p)
    return problems, samples


def check(url):
    """Scrapes `url`; exits with the problems found, else returns the samples."""
    with urllib.request.urlopen(url, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    problems, samples = problems_in(text)
    if not ctype.startswith("text/plain; version=0.0.4"):
        problems.append("Content-Type " + ctype)
    if problems:
        sys.exit("%s: %d problems:\n  %s" % (url, len(problems), "\n  ".join(problems)))
    return samples


if sys.argv[1] == "selftest":
    # The checker itself must catch a broken exposition.
    bad = ("# HELP x_total x\n# TYPE x_total counter\nx_total 1\nx_total{a=b} 2\n"
           "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\n"
           "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n")
    problems, _ = problems_in(bad)
    for want in ("not a sample", "not cumulative", "_count", "not psd_"):
        assert any(want in p for p in problems), (want, problems)
elif sys.argv[1] == "scrape":
    for arg in sys.argv[3:]:
        name, url = arg.split("=", 1)
        json.dump(check(url), open("%s.%s.json" % (sys.argv[2], name), "w"))
elif sys.argv[1] == "during":
    worker, max_steps, prefix = sys.argv[2], float(sys.argv[3]), sys.argv[4]
    deadline = time.time() + 60
    while True:
        steps = check(worker).get("psd_worker_steps_total", 0)
        if 0 < steps <= max_steps:
            break
        if steps > max_steps or time.time() > deadline:
            sys.exit("no scrape caught the job mid-way: worker steps %s" % steps)
        time.sleep(0.01)
    for arg in sys.argv[5:]:
        name, url = arg.split("=", 1)
        json.dump(check(url), open("%s.%s.json" % (prefix, name), "w"))
PY
python3 "$WORK/promcheck.py" selftest || fail "promcheck.py misses broken text"

url() { echo "http://127.0.0.1:$(cat "$WORK/$1.mport")/metrics"; }
ALL=(coordinator server1 server2 worker1 worker2)
# scrape PREFIX: every process's metrics into $WORK/PREFIX.NAME.json.
scrape() {
  local args=() p
  for p in "${ALL[@]}"; do args+=("$p=$(url $p)"); done
  python3 "$WORK/promcheck.py" scrape "$WORK/$1" "${args[@]}" ||
    fail "the metrics do not parse ($1)"
}

start_process() {  # NAME BINARY ARGS...
  local name=$1 bin=$2
  shift 2
  "$BIN/$bin" --insecure --metrics_listen=127.0.0.1:0 --metrics_port_file="$WORK/$name.mport" \
    "$@" 2>"$WORK/$name.log" &
  PIDS+=($!)
  wait_port $! "$WORK/$name.mport" >/dev/null || fail "$name did not serve metrics"
}

start_process coordinator server/coordinator/psd_coordinator --port_file="$WORK/coordinator.port"
COORDINATOR=127.0.0.1:$(wait_port "${PIDS[0]}" "$WORK/coordinator.port") ||
  fail "coordinator did not start"
for p in server1 server2; do
  start_process $p server/ps/psd_server --coordinator="$COORDINATOR"
done
for p in worker1 worker2; do
  start_process $p worker/psd_worker --coordinator="$COORDINATOR"
done
CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready >/dev/null

grep -q "serving Prometheus metrics on http://127.0.0.1:$(cat "$WORK/server1.mport")/metrics" \
  "$WORK/server1.log" || fail "server1 does not log its metrics address"

# A metrics port in use: a clear error and exit 1, not a silent second listener.
rc=0
timeout 20 "$BIN/server/coordinator/psd_coordinator" --insecure \
  --metrics_listen=127.0.0.1:"$(cat "$WORK/server1.mport")" >"$WORK/inuse.log" 2>&1 || rc=$?
[ $rc -eq 1 ] || { cat "$WORK/inuse.log"; fail "metrics port in use: exit $rc, want 1"; }
grep -q "cannot listen on 127.0.0.1:$(cat "$WORK/server1.mport")" "$WORK/inuse.log" ||
  { cat "$WORK/inuse.log"; fail "metrics port in use: no clear error"; }

scrape before
write_short_job "$WORK/short.textproto"
sed -i 's/^epochs: 2$/epochs: 3/' "$WORK/short.textproto"  # a longer window
STEPS=279  # 3 epochs x floor(6000 / 64)
id=$("${CTL[@]}" submit "$WORK/short.textproto") || fail "submit"
# During the job: when worker1 has done some steps but at most half.
python3 "$WORK/promcheck.py" during "$(url worker1)" $((STEPS / 2)) "$WORK/during" \
  coordinator="$(url coordinator)" server1="$(url server1)" server2="$(url server2)" ||
  fail "mid-job scrape"
"${CTL[@]}" watch "$id" >"$WORK/watch" || { cat "$WORK/watch"; fail "job $id did not succeed"; }
scrape after

# The counters moved as the job went, and agree with each other.
python3 - "$WORK" "$STEPS" <<'PY' || fail "metrics do not match the job"
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
def load(phase, name):
    return json.load(open("%s/%s.%s.json" % (work, phase, name)))
failures = []
def expect(ok, what):
    if not ok: failures.append(what)

c0, c1, c2 = (load(p, "coordinator") for p in ("before", "during", "after"))
expect(c0["psd_coordinator_registered_servers"] == 2, "2 servers registered")
expect(c0["psd_coordinator_registered_workers"] == 2, "2 workers registered")
expect(c1['psd_coordinator_jobs{state="RUNNING"}'] == 1, "1 job running mid-way")
expect(c2['psd_coordinator_jobs{state="SUCCEEDED"}'] == 1, "1 job succeeded")
expect(c2['psd_coordinator_jobs{state="RUNNING"}'] == 0, "no job running after")
# Membership (issue 16): the running job's 2 workers, its first epoch.
workers = [v for k, v in c1.items() if k.startswith("psd_coordinator_job_workers{")]
expect(workers == [2], "the running job has 2 workers: %s" % workers)
epochs = [v for k, v in c1.items() if k.startswith("psd_coordinator_job_membership_epoch{")]
expect(epochs == [1], "membership epoch 1 mid-way: %s" % epochs)
expect(not any(k.startswith("psd_coordinator_job_workers{") for k in c2),
       "no membership samples once no job runs")
expect(c2["psd_coordinator_pending_jobs"] == 0, "no job pending")
for s in ("server1", "server2"):
    before, during, after = (load(p, s) for p in ("before", "during", "after"))
    for m in ("push_requests_total", "push_bytes_total", "pull_requests_total",
              "pull_bytes_total"):
        m = "psd_server_" + m
        expect(before[m] < during[m] < after[m],
               "%s %s increases: %s, %s, %s" % (s, m, before[m], during[m], after[m]))
    expect(after["psd_server_push_errors_total"] == 0, s + " no push errors")
    expect(after["psd_server_push_latency_seconds_count"] ==
           after["psd_server_push_requests_total"], s + " one latency per push")
    expect(after["psd_server_pull_latency_seconds_count"] ==
           after["psd_server_pull_requests_total"], s + " one latency per pull")
    # Each worker pushes every step, with at least one partition here.
    expect(after["psd_server_push_requests_total"] >= 2 * steps, s + " pushes")
for w in ("worker1", "worker2"):
    before, after = load("before", w), load("after", w)
    expect(before["psd_worker_steps_total"] == 0, w + " no steps before the job")
    expect(after["psd_worker_steps_total"] == steps, w + " steps")
    expect(after["psd_worker_samples_total"] == steps * 64, w + " samples")
    expect(after["psd_worker_step_seconds_count"] == steps, w + " step times")
    expect(after["psd_worker_step_seconds_sum"] > 0, w + " step time")
    expect(after["process_cpu_seconds_total"] > before["process_cpu_seconds_total"],
           w + " CPU time")
if failures:
    sys.exit("\n".join(failures))
print("counters OK: server1 pushes %d, worker1 steps %d" %
      (load("after", "server1")["psd_server_push_requests_total"],
       load("after", "worker1")["psd_worker_steps_total"]))
PY

# Debian's promtool, where it happens to be installed.
if command -v promtool >/dev/null; then
  for p in coordinator server1 worker1; do
    python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
      "http://127.0.0.1:$(cat "$WORK/$p.mport")/metrics" | promtool check metrics ||
      fail "promtool check metrics: $p"
  done
else
  echo "promtool not installed; the format was checked by promcheck.py only"
fi
echo PASS
