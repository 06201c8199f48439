#!/usr/bin/env python3
"""Renders docs/scaling/*.png from the scale_bench results in
docs/scaling/data/*.jsonl (one JSON object per run, as
tests/bench/scale_bench.sh --out writes them). Run docs/scaling/render.sh,
which installs python3-matplotlib from Debian when it is missing.

  sweep.jsonl     N x S sweep, no failure (R=1)
  failover.jsonl  N sweep with S=2, R=2, the primary of shard 0 killed
  bound.jsonl     the largest N tried (S=1)
"""
import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLOR = {1: "C0", 2: "C1", 4: "C2", 8: "C3"}  # one color per server count


def load(name):
    path = os.path.join(HERE, "data", name)
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


def by_servers(rows):
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["servers_started"]].append(r)
    return {s: sorted(g, key=lambda r: r["workers"]) for s, g in sorted(groups.items())}


def val(r, key, scale=1.0):
    v = r.get(key)
    return float("nan") if v is None else v * scale


def panel(ax, groups, key, label, scale=1.0, style="o-", suffix=""):
    for s, rows in groups.items():
        ax.plot([r["workers"] for r in rows], [val(r, key, scale) for r in rows],
                style, color=COLOR.get(s, "k"), label=f"S={s}{suffix}")
    ax.set_xlabel("simulated workers N")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)


def save(fig, name):
    fig.tight_layout()
    out = os.path.join(HERE, name)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print("wrote", out)


def table(rows):
    """The measured points as a markdown table (docs/SCALING.md)."""
    cols = [("N", "workers", 1, "d"), ("S", "servers_started", 1, "d"),
            ("floats", "floats", 1, "d"),
            ("us/heartbeat", "coordinator_cpu_us_per_heartbeat", 1, ".0f"),
            ("coord cores quiet", "coordinator_cpu_share_quiet", 1, ".3f"),
            ("coord RSS MiB", "coordinator_rss_registered_mib", 1, ".1f"),
            ("KiB/worker", "coordinator_rss_per_worker_kib", 1, ".1f"),
            ("assign all s", "job_assign_all_s", 1, ".2f"),
            ("view spread s", "job_view_spread_s", 1, ".2f"),
            ("step p50 ms", "step_p50_ms", 1, ".0f"), ("step p99 ms", "step_p99_ms", 1, ".0f"),
            ("steps/s", "steps_per_s", 1, ".2f"), ("pushes/s", "pushes_per_s", 1, ".0f"),
            ("push MB/s", "push_bytes_per_s", 1e-6, ".1f"),
            ("server pushes", "server_push_requests", 1, "d"),
            ("server CPU s", "server_cpu_s", 1, ".2f"),
            ("server RSS MiB", "server_rss_max_mib", 1, ".0f"),
            ("failover view s", "failover_view_all_s", 1, ".2f"),
            ("steps resume s", "failover_resume_s", 1, ".2f")]
    cols = [c for c in cols if any(r.get(c[1]) is not None for r in rows)]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for _, key, scale, fmt in cols:
            v = r.get(key)
            cells.append("-" if v is None else format(v * scale if fmt != "d" else int(v), fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    for name in ("sweep.jsonl", "bound.jsonl", "failover.jsonl", "per_byte.jsonl"):
        rows = load(name)
        if rows:
            print(f"{name}:")
            print(table(rows))
            print()
    sweep = load("sweep.jsonl") + load("bound.jsonl")
    failover = load("failover.jsonl")
    if not sweep:
        sys.exit("no docs/scaling/data/sweep.jsonl")
    g = by_servers(sweep)

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    panel(ax[0], g, "coordinator_cpu_us_per_heartbeat", "coordinator CPU per heartbeat (us)")
    ax[0].set_title("Heartbeat cost (quiet interval)")
    ax[0].legend()
    panel(ax[1], g, "coordinator_cpu_share_quiet", "coordinator CPU (cores), quiet")
    panel(ax[1], g, "coordinator_cpu_share_steps", "coordinator CPU (cores)", style="x--",
          suffix=" during steps")
    ax[1].set_title("Coordinator CPU, heartbeats every 250 ms")
    ax[1].legend(fontsize=7)
    save(fig, "coordinator_cpu.png")

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    panel(ax[0], g, "coordinator_rss_registered_mib", "coordinator RSS (MiB)")
    ax[0].set_title("Coordinator memory, N registered")
    ax[0].legend()
    panel(ax[1], g, "coordinator_rss_per_worker_kib", "RSS growth per worker (KiB)")
    ax[1].set_title("Coordinator memory per registered worker")
    save(fig, "coordinator_memory.png")

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    panel(ax[0], g, "job_assign_all_s", "seconds")
    panel(ax[0], g, "job_view_spread_s", "seconds", style="x--", suffix=" spread")
    ax[0].set_title("Job start: submit -> every worker has its rank\n"
                    "(spread: first to last worker)", fontsize=9)
    ax[0].legend(fontsize=7)
    if failover:
        fg = by_servers(failover)
        panel(ax[1], fg, "failover_view_all_s", "seconds")
        panel(ax[1], fg, "failover_view_spread_s", "seconds", style="x--", suffix=" spread")
        panel(ax[1], fg, "failover_resume_s", "seconds", style="s:", suffix=" steps resume")
        ax[1].set_title("Failover: kill -> every worker has the new view,\n"
                        "and -> the step completes (R=2)", fontsize=9)
        ax[1].legend(fontsize=7)
    save(fig, "view_publish.png")

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    panel(ax[0], g, "pushes_per_s", "push RPCs/s, all servers")
    ax[0].set_title("Server fan-in (target 5 steps/s)")
    ax[0].legend()
    panel(ax[1], g, "push_bytes_per_s", "pushed MB/s, all servers", scale=1e-6)
    ax2 = ax[1].twinx()
    for s, rows in g.items():
        ax2.plot([r["workers"] for r in rows], [r["steps_per_s"] for r in rows], "x:",
                 color=COLOR.get(s, "k"), label=f"S={s} steps/s")
    ax2.set_ylabel("achieved steps/s (x, dotted)")
    ax[1].set_title("Fan-in bytes, and the step rate achieved")
    save(fig, "fan_in.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    panel(ax, g, "step_p50_ms", "BSP step latency (ms)")
    panel(ax, g, "step_p99_ms", "BSP step latency (ms)", style="x--", suffix=" p99")
    ax.set_yscale("log")
    ax.set_title("Push + pull of one step, per worker (p50, p99)")
    ax.legend(fontsize=7)
    save(fig, "step_latency.png")


if __name__ == "__main__":
    main()
