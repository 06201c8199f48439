"""A psd.torch worker for the tests (tests/torch_test.sh, torch_failover_test.sh).

  torch_worker.py spec                      prints the job's model block
  torch_worker.py train --coordinator=A --out=F [--slow_ms=N]
      trains its rank, saves the final parameters (torch.save) to F
  torch_worker.py check --coordinator=A --out=F
      one worker: bad input raises exceptions naming the parameter, then
      100 steps against torch.optim.SGD run locally (parity within 1e-6)
  torch_worker.py load --export=E --params=F
      the export loads back into the module and equals the worker's copy
Every mode takes --tls_dir=DIR (deploy/make_certs.sh) or runs plaintext.
"""

import argparse
import copy
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import psd.torch as pst

torch.set_num_threads(1)
DATA = "/usr/share/datasets/fashion-mnist"


class Net(nn.Module):
    """A small CNN: one conv layer, then a linear classifier."""

    def __init__(self, classes=10, extra=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 13 * 13, classes)
        if extra:
            self.extra = nn.Linear(2, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


def connect(args, **kwargs):
    if args.tls_dir:
        d = args.tls_dir
        return pst.init(args.coordinator, tls_ca_file=d + "/ca.pem",
                        tls_cert_file=d + "/worker.pem",
                        tls_key_file=d + "/worker.key", **kwargs)
    return pst.init(args.coordinator, insecure=True, **kwargs)


def train_set(ctx):
    (x, y), _ = pst.load_fashion_mnist(DATA, train_limit=ctx.train_examples,
                                       test_limit=1)
    return x, y


def expect(exc_type, needle, fn):
    try:
        fn()
    except exc_type as e:
        if needle not in str(e):
            sys.exit("FAIL: %s without %r: %s" % (exc_type.__name__, needle, e))
        print("ok: %s: %s" % (exc_type.__name__, e))
        return
    sys.exit("FAIL: no %s (%s)" % (exc_type.__name__, needle))


def train(args):
    ctx = connect(args)
    model = Net()
    opt = pst.DistributedOptimizer(model, ctx)
    for x, y in pst.shard(train_set(ctx), ctx):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        if args.slow_ms:
            time.sleep(args.slow_ms / 1000)
    torch.save(model.state_dict(), args.out)
    print("rank %d of %s: %d steps done" % (ctx.rank, ctx.job_id, ctx.step))
    ctx.close()


def check(args):
    unreachable = argparse.Namespace(**dict(vars(args), coordinator="127.0.0.1:1"))
    expect(ConnectionError, "127.0.0.1:1",
           lambda: connect(unreachable, connect_timeout_s=1))
    ctx = connect(args)
    expect(ValueError, "'fc.weight'",
           lambda: pst.DistributedOptimizer(Net(classes=5), ctx))
    expect(ValueError, "'extra.weight'",
           lambda: pst.DistributedOptimizer(Net(extra=True), ctx))
    expect(TypeError, "'conv.weight'",
           lambda: pst.DistributedOptimizer(Net().double(), ctx))
    missing = Net()
    del missing.conv
    missing.conv = nn.Identity()
    expect(ValueError, "'conv.weight'",
           lambda: pst.DistributedOptimizer(missing, ctx))
    expect(ValueError, "dataset: 7 examples",
           lambda: next(pst.shard((torch.zeros(7, 1, 28, 28),
                                   torch.zeros(7)), ctx)))

    model = Net()
    opt = pst.DistributedOptimizer(model, ctx)
    # The same module, trained locally by torch from the servers' initial
    # values, on the same batches.
    ref = copy.deepcopy(model)
    spec = ctx.config_text
    lr = float(spec.split("learning_rate: ")[1].split()[0])
    momentum = float(spec.split("momentum: ")[1].split()[0])
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum)
    for x, y in pst.shard(train_set(ctx), ctx):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    diff = max((a - b).abs().max().item()
               for a, b in zip(model.parameters(), ref.parameters()))
    print("parity: %d steps, largest difference %.3g" % (ctx.step, diff))
    if ctx.step != 100 or not diff <= 1e-6:
        sys.exit("FAIL: parity with torch.optim.SGD: %d steps, difference %g"
                 % (ctx.step, diff))
    torch.save(model.state_dict(), args.out)
    ctx.close()


def load(args):
    tensors, metadata, checksum = pst.load_safetensors(args.export)
    model = Net()
    model.load_state_dict(tensors)
    mine = torch.load(args.params)
    for name, value in model.state_dict().items():
        if not torch.equal(value, mine[name]):
            sys.exit("FAIL: export's %s differs from the worker's" % name)
    print("export %s (%s, step %s) loads back into the module"
          % (args.export, checksum, metadata.get("step")))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["spec", "train", "check", "load"])
    p.add_argument("--coordinator", default="")
    p.add_argument("--tls_dir", default="")
    p.add_argument("--out", default="")
    p.add_argument("--slow_ms", type=int, default=0)
    p.add_argument("--export", default="")
    p.add_argument("--params", default="")
    args = p.parse_args()
    if args.mode == "spec":
        sys.stdout.write(pst.external_model_spec(Net()))
    else:
        {"train": train, "check": check, "load": load}[args.mode](args)


if __name__ == "__main__":
    main()
