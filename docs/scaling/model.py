#!/usr/bin/env python3
"""The scaling model of docs/SCALING.md: projects psd to W workers and S
servers from the costs measured by tests/bench/scale_bench.sh (the files
in docs/scaling/data/). Prints the measured constants, then the projection
table. Assumptions are in docs/SCALING.md, "A model for 1,000 workers";
each is a named constant or argument below.
"""
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
HEARTBEAT_S = 0.25           # psd's default heartbeat period
HEARTBEAT_TIMEOUT_S = 1.5    # psd_coordinator's default
PARTITION_BYTES = 1 << 20    # psd's default partition size
SERVER_CORES = 16            # assumed per server machine (OSDI'14's had 16)
NIC_EFFICIENCY = 0.9         # share of line rate gRPC/TCP reaches (assumed)


def load(name):
    path = os.path.join(HERE, "data", name)
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []


def constants():
    sweep = load("sweep.jsonl")
    per_byte = load("per_byte.jsonl")
    big = [r for r in sweep if r["workers"] >= 200]
    c = {}
    c["hb_cpu_s"] = statistics.median(r["coordinator_cpu_us_per_heartbeat"] for r in big) * 1e-6
    c["rss_per_worker_b"] = statistics.median(r["coordinator_rss_per_worker_kib"] for r in sweep) * 1024
    small = min(per_byte, key=lambda r: r["floats"])
    large = max(per_byte, key=lambda r: r["floats"])
    # Server CPU = pushes x c_msg + pushed bytes x c_byte (a push carries the
    # pull of the next step back: pull_with_push), solved from two sizes.
    def xy(r):
        return r["server_push_requests"], r["server_push_bytes"], r["server_cpu_s"]
    m1, b1, t1 = xy(small)
    m2, b2, t2 = xy(large)
    c_byte = (t2 - t1 * m2 / m1) / (b2 - b1 * m2 / m1)
    c_msg = (t1 - c_byte * b1) / m1
    c["c_msg_s"], c["c_byte_s"] = c_msg, c_byte
    # Server memory per byte of W x (its share of the model): BSP keeps every
    # rank's gradient of a step (server/ps/bsp_rule.cc), and gRPC holds the
    # requests and responses in flight.
    w, m, s = large["workers"], large["floats"] * 4, large["servers"]
    c["server_mem_factor"] = large["server_rss_max_mib"] * 2**20 / (w * m / s)
    # Coordinator CPU per heartbeat that carries an assignment, against the
    # response's size: least squares over the --hold_s runs.
    held = load("assignment.jsonl")
    xs = [r["heartbeat_response_bytes"] for r in held]
    ys = [r["coordinator_cpu_us_per_assigned_heartbeat"] * 1e-6 for r in held]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    c["hb_cpu_per_assignment_byte_s"] = (
        sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
    return c


def assignment_bytes(partitions, servers, replicas):
    """A heartbeat response with an assignment, fitted to the measured ones
    (docs/scaling/data/assignment.jsonl and sweep.jsonl): ~13 B per
    Partition, ~60 B per server at R = 1 (its ServerInfo and its shard's
    ShardReplicas), ~20 B more per server and extra replica, ~250 B of
    JobConfig and the rest."""
    return 250 + 13 * partitions + 60 * servers + 20 * servers * (replicas - 1)


def project(c, workers, servers, model_bytes, nic_gbit):
    b = nic_gbit * 1e9 / 8 * NIC_EFFICIENCY            # bytes/s each way
    share = model_bytes / servers                        # bytes per server
    partitions = max(1, model_bytes // PARTITION_BYTES)
    pushes = workers * partitions / servers              # per server per step
    t_net = workers * share / b                          # in == out, full duplex
    t_cpu = (pushes * c["c_msg_s"] + workers * share * c["c_byte_s"]) / SERVER_CORES
    t_worker = model_bytes / b                           # a worker's own NIC
    hb_per_s = (workers + servers) / HEARTBEAT_S
    hb_bytes = assignment_bytes(partitions, servers, 2)
    return {
        "W": workers, "S": servers, "model_MB": model_bytes / 1e6, "NIC_Gbit": nic_gbit,
        "server_net_s": t_net, "server_cpu_s": t_cpu, "worker_net_s": t_worker,
        "step_comm_s": max(t_net, t_cpu, t_worker),
        "bound": max((t_net, "server NIC"), (t_cpu, "server CPU"), (t_worker, "worker NIC"))[1],
        "server_mem_GB": c["server_mem_factor"] * workers * share / 1e9,
        # Since heartbeats name the assignment held (assignment_held), the
        # whole assignment goes out only after a view change: in steady
        # state a heartbeat costs the same whatever the placement.
        "coord_cores": hb_per_s * c["hb_cpu_s"],
        # Before that, every worker heartbeat carried it.
        "coord_cores_resent": hb_per_s * c["hb_cpu_s"]
        + workers / HEARTBEAT_S * hb_bytes * c["hb_cpu_per_assignment_byte_s"],
        "coord_mem_MB": workers * c["rss_per_worker_b"] / 1e6,
        "coord_hb_MB_s_resent": workers / HEARTBEAT_S * hb_bytes / 1e6,
        "failover_s": HEARTBEAT_TIMEOUT_S + HEARTBEAT_S,
    }


def main():
    c = constants()
    print("measured constants:")
    for k, v in c.items():
        print(f"  {k} = {v:.4g}")
    print()
    cols = ["W", "S", "model_MB", "NIC_Gbit", "server_net_s", "server_cpu_s", "worker_net_s",
            "step_comm_s", "bound", "server_mem_GB", "coord_cores", "coord_cores_resent",
            "coord_mem_MB", "coord_hb_MB_s_resent", "failover_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for model in (100e6, 1e9, 10e9):
        for nic in (25, 100):
            p = project(c, 1000, 100, model, nic)
            print("| " + " | ".join(
                f"{p[k]:.3g}" if isinstance(p[k], float) else str(p[k]) for k in cols) + " |")


if __name__ == "__main__":
    main()
