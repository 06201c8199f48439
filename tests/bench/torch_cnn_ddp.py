#!/usr/bin/python3
"""The PyTorch DDP baseline of deploy/examples/fashion_cnn.py (issue 18).

The same module (imported from the example), optimizer (Adam, lr 1e-3),
batch (64 per rank, 2 ranks), data (psd's loader and each rank's psd order:
the same batches as the psd job) and evaluation (rank 0, the whole test set
after every epoch, inside the time), under
torch.nn.parallel.DistributedDataParallel with gloo on 127.0.0.1. Prints one
JSON line per epoch like the example: {"epoch", "rank", "steps",
"elapsed_s", "test_accuracy"}, from rank 0 only.

Usage: tests/bench/torch_cnn_ddp.py [--epochs 8] [--workers 2] [--seed 1]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../deploy/examples"))
import fashion_cnn  # noqa: E402
import psd.torch as pst  # noqa: E402
from psd import _psd  # noqa: E402


def run(rank, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % args.port,
                            rank=rank, world_size=args.workers)
    (tx, ty), (vx, vy) = pst.load_fashion_mnist(args.data_dir)
    torch.manual_seed(args.seed)
    model = torch.nn.parallel.DistributedDataParallel(fashion_cnn.Net())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = 64
    steps_per_epoch = len(tx) // args.workers // b
    start = time.monotonic()
    steps = 0
    for epoch in range(args.epochs):
        order = torch.from_numpy(
            _psd.epoch_order(len(tx), rank, args.workers, args.seed, epoch))
        for i in range(steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            opt.zero_grad()
            F.cross_entropy(model(tx[idx]), ty[idx]).backward()
            opt.step()
            steps += 1
        line = {"epoch": epoch, "rank": rank, "steps": steps}
        if rank == 0:
            line["test_accuracy"] = fashion_cnn.accuracy(model.module, vx, vy)
        dist.barrier()
        line["elapsed_s"] = round(time.monotonic() - start, 3)
        if rank == 0:  # one writer: the lines would interleave
            print(json.dumps(line), flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--data_dir", default=fashion_cnn.DATA)
    args = p.parse_args()
    mp.spawn(run, args=(args,), nprocs=args.workers)


if __name__ == "__main__":
    main()
