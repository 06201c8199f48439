#!/usr/bin/python3
"""PyTorch baselines for the quick-start job (issue 14): time to accuracy.

Trains the quick start's model with PyTorch (Debian python3-torch, CPU,
OpenBLAS) the way a user of PyTorch would, and prints one JSON line:

  {"mode": "single"|"ddp", "time_to_target_s": S or null,
   "epoch_to_target": E or null, "accuracy": [per epoch], "epoch_s": [...]}

Same job as deploy/jobs/fashion_mnist_mlp.textproto: MLP 784-256-128-10
(ReLU), Glorot-uniform weights and zero biases (psd's InitialValues,
common/placement.cc), inputs pixel/255 normalised by the training set's
mean and std (psd's ComputeNormalization), SGD lr 0.02, momentum 0.9,
weight decay 5e-4, global batch 128, shuffled every epoch.

  single: one process, batch 128.
  ddp:    torch.nn.parallel.DistributedDataParallel, gloo on 127.0.0.1,
          2 processes x batch 64 (DistributedSampler).
  step:   no training: the median time of one forward and backward pass
          of batch --batch (64), like tests/bench/mlp_step_bench (prints
          {"mode": "step", "median_us": ..., "us_per_sample": ...}).

Time runs from the first training step to the end of the epoch whose test
accuracy (all 10,000 test images, evaluated after every epoch, by rank 0
under DDP) first reaches --target; the evaluation is inside the time, as it
is in psd's worker rank 0. Data loading and process start-up are outside it.

OpenBLAS threads: Debian's OpenBLAS is the pthread build and ignores
torch.set_num_threads, so OPENBLAS_NUM_THREADS/OMP_NUM_THREADS must be set
before torch is imported; this script sets both to --threads (default 1).

Usage: tests/bench/torch_baseline.py --mode single|ddp|step [--epochs 8]
       [--target 0.88] [--threads 1] [--data_dir DIR] [--seed 0]
"""
import argparse
import gzip
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["single", "ddp", "step"], required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--passes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--target", type=float, default=0.88)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=29517)
    return p.parse_args()


ARGS = parse_args()
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402


def read_idx(path):
    """An idx file (gzip) as a numpy array (the format's own header)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir):
    def images(name):
        x = read_idx(os.path.join(data_dir, name)).astype(np.float32) / 255.0
        return x.reshape(x.shape[0], -1)

    x_train = images("train-images-idx3-ubyte.gz")
    x_test = images("t10k-images-idx3-ubyte.gz")
    mean, std = float(x_train.mean()), float(x_train.std())
    y_train = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    y_test = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    norm = lambda x: torch.from_numpy((x - mean) / std)  # noqa: E731
    return (norm(x_train), torch.from_numpy(y_train.astype(np.int64)),
            norm(x_test), torch.from_numpy(y_test.astype(np.int64)))


def make_model(seed):
    torch.manual_seed(seed)
    layers, sizes = [], [784, 256, 128, 10]
    for i in range(3):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(rank, world, data, result):
    x_train, y_train, x_test, y_test = data
    torch.set_num_threads(ARGS.threads)
    model = make_model(ARGS.seed)
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(ARGS.port)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9,
                          weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    batch = 128 // world
    n = x_train.shape[0]
    per_rank = n // world
    gen = torch.Generator().manual_seed(ARGS.seed)
    accs, epoch_s = [], []
    reached_s = reached_epoch = None
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for epoch in range(ARGS.epochs):
        t0 = time.perf_counter()
        # DistributedSampler's scheme: one permutation, rank r takes r::world.
        order = torch.randperm(n, generator=gen)[rank:per_rank * world:world]
        model.train()
        for i in range(0, per_rank - batch + 1, batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        if rank == 0:
            model.eval()
            accs.append(accuracy(model, x_test, y_test))
            if reached_s is None and accs[-1] >= ARGS.target:
                reached_s = time.perf_counter() - start
                reached_epoch = epoch + 1
        epoch_s.append(time.perf_counter() - t0)
    if rank == 0:
        result.update({"mode": ARGS.mode, "time_to_target_s": reached_s,
                       "epoch_to_target": reached_epoch, "target": ARGS.target,
                       "accuracy": [round(a, 4) for a in accs],
                       "epoch_s": [round(s, 3) for s in epoch_s],
                       "train_s": round(time.perf_counter() - start, 3),
                       "threads": ARGS.threads, "torch": torch.__version__})
    if world > 1:
        dist.destroy_process_group()


def ddp_rank(rank, data, queue):
    result = {}
    train(rank, 2, data, result)
    if rank == 0:
        queue.put(result)


def step_time():
    """Median microseconds of one forward + backward pass (no optimizer)."""
    torch.set_num_threads(ARGS.threads)
    model = make_model(ARGS.seed)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(ARGS.batch, 784)
    y = torch.arange(ARGS.batch) % 10
    times = []
    for i in range(ARGS.passes + 50):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if i >= 50:
            times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    median = times[len(times) // 2]
    return {"mode": "step", "batch": ARGS.batch, "median_us": round(median, 1),
            "min_us": round(times[0], 1),
            "us_per_sample": round(median / ARGS.batch, 2),
            "threads": ARGS.threads, "torch": torch.__version__}


def main():
    if ARGS.mode == "step":
        print(json.dumps(step_time()), flush=True)
        return 0
    data = load(ARGS.data_dir)
    if ARGS.mode == "single":
        result = {}
        train(0, 1, data, result)
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        mp.start_processes(ddp_rank, args=(data, queue), nprocs=2,
                           start_method="spawn")
        result = queue.get()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
