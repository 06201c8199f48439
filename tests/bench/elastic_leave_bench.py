#!/usr/bin/env python3
"""Time from a worker's SIGTERM to the job stepping without it (issue 16).

Real processes on loopback: a psd_coordinator, 2 psd_servers, and per trial
2 psd_workers training an elastic job (min_workers 1, max_workers 2: 2
ranks, one per worker). Once both have pushed some steps, one worker gets
SIGTERM (preemption: it finishes its step, pushes it, hands its rank back
and exits); the time measured runs from the signal until the other worker
has pushed a step of the rank that moved (its --sample_log line appears),
i.e. the job steps without the leaver. Baseline in the same run: the same
with SIGKILL (a crash: the coordinator notices after its heartbeat
timeout, 1500 ms by default, and the rank resumes where the servers are).
Also the job's step time before the signal (the median interval between
the survivor's pushes), for scale. Prints medians over the trials.

Usage: tests/bench/elastic_leave_bench.py [--trials N] [--bin DIR]
  --bin: where server/coordinator/psd_coordinator etc. are (default
         bazel-bin, from the repository root).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

JOB = """name: "leave"
model { kind: MLP input_dim: 784 hidden_sizes: [256, 128] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 12000 test_limit: 1000 }
optimizer { kind: SGD learning_rate: 0.02 momentum: 0.9 }
consistency: BSP
batch_size: 64
epochs: 100
min_workers: 1
max_workers: 2
seed: 1
"""


def wait_file(path, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        time.sleep(0.05)
    raise SystemExit("no %s within %d s" % (path, timeout))


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.split() for l in f.read().splitlines() if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--bin", default="bazel-bin")
    args = ap.parse_args()
    b = args.bin
    work = tempfile.mkdtemp(prefix="psd-leavebench.")
    procs = []

    def start(argv, log):
        p = subprocess.Popen(argv, stderr=open(os.path.join(work, log), "w"))
        procs.append(p)
        return p

    try:
        print("machine: %d cores, %s; load average at start: %s" % (
            os.cpu_count(),
            next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                 if l.startswith("model name")),
            " ".join(open("/proc/loadavg").read().split()[:3])))
        port_file = os.path.join(work, "c.port")
        start([b + "/server/coordinator/psd_coordinator", "--insecure",
               "--port_file=" + port_file], "c.log")
        coordinator = "127.0.0.1:" + wait_file(port_file)
        for i in (1, 2):
            start([b + "/server/ps/psd_server", "--insecure",
                   "--coordinator=" + coordinator], "s%d.log" % i)
        ctl = [b + "/deploy/psd_ctl", "--insecure", "--coordinator=" + coordinator]
        job_file = os.path.join(work, "job.textproto")
        open(job_file, "w").write(JOB)
        results = {"SIGTERM": [], "SIGKILL": []}
        step_times = []
        for trial in range(args.trials):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                tag = "%s.%d" % (sig.name, trial)
                logs = [os.path.join(work, "%s.w%d.samples" % (tag, i)) for i in (1, 2)]
                workers = [start([b + "/worker/psd_worker", "--insecure",
                                  "--coordinator=" + coordinator,
                                  "--sample_log=" + logs[i]], "%s.w%d.log" % (tag, i + 1))
                           for i in (0, 1)]
                subprocess.run(ctl + ["--servers=2", "--workers=2", "--timeout_s=30",
                                      "wait-ready"], check=True, stdout=subprocess.DEVNULL)
                job = subprocess.run(ctl + ["submit", job_file], check=True,
                                     capture_output=True, text=True).stdout.strip()
                # Both workers pushing: 30 steps of rank 0's worker.
                end = time.time() + 120
                while min(len(lines(logs[0])), len(lines(logs[1]))) < 30:
                    if time.time() > end:
                        raise SystemExit("%s: workers did not train" % tag)
                    time.sleep(0.02)
                moved = {int(l[3]) for l in lines(logs[1])}
                seen = len(lines(logs[0]))
                t0 = time.monotonic()
                workers[1].send_signal(sig)
                while True:
                    now = lines(logs[0])[seen:]
                    if any(int(l[3]) in moved for l in now):
                        break
                    if time.monotonic() - t0 > 120:
                        raise SystemExit("%s: the job did not step without the worker" % tag)
                    time.sleep(0.002)
                results[sig.name].append(time.monotonic() - t0)
                workers[1].wait(timeout=60)
                subprocess.run(ctl + ["cancel", job], stdout=subprocess.DEVNULL)
                workers[0].kill()
                workers[0].wait()
                print("%s: %.3f s (exit code %s)" % (tag, results[sig.name][-1],
                                                    workers[1].returncode), flush=True)
                time.sleep(2)  # the coordinator expires the killed members
        # The job's step time on 2 workers, for scale: one more run, timed
        # over 100 steps of the sample log.
        logs = [os.path.join(work, "step.w%d.samples" % i) for i in (1, 2)]
        workers = [start([b + "/worker/psd_worker", "--insecure",
                          "--coordinator=" + coordinator,
                          "--sample_log=" + logs[i]], "step.w%d.log" % (i + 1))
                   for i in (0, 1)]
        subprocess.run(ctl + ["--servers=2", "--workers=2", "--timeout_s=30",
                              "wait-ready"], check=True, stdout=subprocess.DEVNULL)
        job = subprocess.run(ctl + ["submit", job_file], check=True,
                             capture_output=True, text=True).stdout.strip()
        while len(lines(logs[0])) < 20:
            time.sleep(0.01)
        t0, n0 = time.monotonic(), len(lines(logs[0]))
        while len(lines(logs[0])) < n0 + 100:
            time.sleep(0.01)
        step = (time.monotonic() - t0) / (len(lines(logs[0])) - n0)
        subprocess.run(ctl + ["cancel", job], stdout=subprocess.DEVNULL)
        print()
        print("| what | median s | all runs s |")
        print("|---|---|---|")
        for name in ("SIGTERM", "SIGKILL"):
            r = results[name]
            print("| %s to a step without the worker | %.3f | %s |" % (
                name, statistics.median(r), ", ".join("%.3f" % x for x in r)))
        print("| one step on 2 workers (mean of 100) | %.4f | |" % step)
        print("load average at end: %s" % " ".join(open("/proc/loadavg").read().split()[:3]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
