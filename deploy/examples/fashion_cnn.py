#!/usr/bin/python3
"""A CNN on Fashion-MNIST, trained by torch workers on psd's servers (issue 18).

  # the job config (an EXTERNAL model listing this module's parameters):
  fashion_cnn.py --print_job > job.textproto     # or fashion_cnn.textproto
  # each worker (start as many as the job's `workers`, then submit the job):
  fashion_cnn.py --coordinator=HOST:PORT --insecure
  fashion_cnn.py --coordinator=HOST:PORT --tls_dir=certs   # mutual TLS

Rank 0 evaluates the whole test set after every epoch and reports it (the
job's test accuracy in `psd_ctl get`); every rank prints one JSON line per
epoch: {"epoch", "rank", "steps", "elapsed_s", "test_accuracy"}.
The model, optimizer and batch size are the DDP baseline's
(tests/bench/torch_cnn_ddp.py).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import psd.torch as pst  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"

JOB = """name: "fashion-cnn"
{model}dataset {{ name: "fashion-mnist" }}
optimizer {{ kind: ADAM learning_rate: 0.001 }}
consistency: BSP
batch_size: 64
epochs: {epochs}
workers: 2
seed: 1
"""


class Net(nn.Module):
    """Two conv layers (16 and 32 channels, 3x3, ReLU, 2x2 max pooling) and
    a linear classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


@torch.no_grad()
def accuracy(model, x, y):
    correct = 0
    for i in range(0, len(x), 1000):
        correct += (model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coordinator", default="127.0.0.1:7070")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--tls_dir", default="",
                   help="deploy/make_certs.sh's folder: ca.pem, worker.pem, "
                   "worker.key")
    p.add_argument("--data_dir", default=DATA)
    p.add_argument("--print_job", action="store_true",
                   help="print the job config and exit")
    p.add_argument("--epochs", type=int, default=8,
                   help="--print_job: the job's epochs")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.print_job:
        sys.stdout.write(JOB.format(model=pst.external_model_spec(Net()),
                                    epochs=args.epochs))
        return
    tls = {}
    if args.tls_dir:
        tls = dict(tls_ca_file=args.tls_dir + "/ca.pem",
                   tls_cert_file=args.tls_dir + "/worker.pem",
                   tls_key_file=args.tls_dir + "/worker.key")
    ctx = pst.init(args.coordinator, insecure=args.insecure, **tls)
    (train_x, train_y), (test_x, test_y) = pst.load_fashion_mnist(args.data_dir)
    model = Net()
    last = {}

    def evaluate(m):  # rank 0, at each epoch end, for the progress report
        last["test_accuracy"] = accuracy(m, test_x, test_y)
        return last["test_accuracy"]

    opt = pst.DistributedOptimizer(model, ctx, evaluate=evaluate)
    start = time.monotonic()
    for epoch in range(ctx.epoch, ctx.epochs):
        for x, y in pst.shard((train_x, train_y), ctx, epoch=epoch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)
        line = {"epoch": epoch, "rank": ctx.rank, "steps": ctx.step,
                "elapsed_s": round(time.monotonic() - start, 3)}
        line.update(last)
        print(json.dumps(line), flush=True)
    ctx.close()


if __name__ == "__main__":
    main()
