#!/usr/bin/python3
"""Single-process PyTorch baseline of psd's sparse models (issue 25).

Trains DLRM (or SPARSE_LR) on click data in the Criteo TSV format
(label, NUM_DENSE integer columns, categorical hex columns; as
//worker:click_data_tool writes generated data, or the Criteo Kaggle /
Terabyte files), with the same maths as worker/sparse_model.h:

  * hashing: field f's value v (the hex parsed, plus 1; missing = 0) is row
        SplitMix64Mix((f + 1) * 2^40 + v) mod num_rows
    of field f's own table (worker/click_data.h, FeatureRow; SplitMix64Mix
    as common/embedding_rows.h), computed here over uint64 with masking;
  * dense features: log(1 + max(x, 0)), missing = 0;
  * SPARSE_LR: logit = bias + sum_f e_f[0]   (tables of dim 1);
  * DLRM: bottom MLP with ReLU after every layer (the last included), the
    pairwise dot products of [z0, e_1 .. e_F] for the pairs j < i in the
    order (1,0), (2,0), (2,1), (3,0), ..., top MLP on [z0, dots] with ReLU
    on its hidden layers and a linear logit; mean logistic loss;
  * init: tables U(-1/sqrt(dim), 1/sqrt(dim)) (psd's UNIFORM default),
    weights Glorot uniform, biases zero (common/placement.h);
  * tables: one nn.EmbeddingBag(num_rows, dim, mode="sum", sparse=True) per
    field; their sparse gradients are applied by torch.optim.Adagrad, which
    accepts sparse gradients and updates only the rows the batch touched
    (lazy, per-element accumulators: as psd's row-wise ADAGRAD);
  * the dense part: the same optimizer kind (--dense_optimizer, default
    adagrad) with --dense_lr.

Prints one JSON line per epoch:
  {"epoch", "seconds", "samples_per_sec", "test_log_loss", "test_auc"}
(seconds: training only, in file order, no shuffling; the evaluation is
not timed), and first a JSON
line describing the run ("config"). Run with /usr/bin/python3 (Debian's
python3-torch). Threads: --threads (sets OMP/OpenBLAS before torch loads).

Example:
  bazel-bin/worker/click_data_tool --dense=13 --fields=26 --out_dir=/tmp/c
  /usr/bin/python3 tests/bench/sparse_torch_baseline.py \
      --train=/tmp/c/train.tsv --test=/tmp/c/test.tsv --num_dense=13
"""

import argparse
import json
import os
import sys
import time

MASK64 = (1 << 64) - 1
FIELD_SHIFT = 40  # values are < 2^40 (worker/click_data.h)


def splitmix64_mix(z):
    """SplitMix64's output function on a Python int, as common/embedding_rows.h."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def feature_row(field, value, num_rows):
    """FeatureRow of worker/click_data.h, on Python ints."""
    return splitmix64_mix(((field + 1) << FIELD_SHIFT) + value) % num_rows


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", help="training TSV file (required)")
    p.add_argument("--test", help="test TSV file (required)")
    p.add_argument("--num_dense", type=int, default=13,
                   help="integer columns after the label (Criteo: 13)")
    p.add_argument("--max_examples", type=int, default=0,
                   help="read only the first N lines of each file (0 = all)")
    p.add_argument("--model", choices=["dlrm", "lr"], default="dlrm")
    p.add_argument("--dim", type=int, default=16,
                   help="DLRM embedding width d (the last bottom width)")
    p.add_argument("--bottom_mlp", default="64,16",
                   help="DLRM bottom widths; the last must equal --dim")
    p.add_argument("--top_mlp", default="64",
                   help="DLRM top hidden widths ('' = none)")
    p.add_argument("--num_rows", type=int, default=100000,
                   help="rows of each field's table (the hashing modulus)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05,
                   help="Adagrad learning rate of the tables")
    p.add_argument("--dense_optimizer", choices=["adagrad", "sgd", "adam"],
                   default="adagrad")
    p.add_argument("--dense_lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--self_test", action="store_true",
                   help="check the hashing against known values and exit")
    args = p.parse_args(argv)
    if not args.self_test and (not args.train or not args.test):
        p.error("--train and --test are required")
    return args


def self_test(np):
    """The hashing here agrees with itself (Python ints vs numpy) and with
    the C++ FeatureRow (SELF_TEST_ROWS)."""
    ok = True
    rng = np.random.default_rng(0)
    fields = rng.integers(0, 40, 1000)
    values = rng.integers(0, 1 << 40, 1000, dtype=np.uint64)
    vec = hash_rows(np, fields.astype(np.uint64), values, 99991)
    for f, v, r in zip(fields, values, vec):
        if feature_row(int(f), int(v), 99991) != int(r):
            ok = False
    # SplitMix64Mix(0) (Vigna's splitmix64.c, first output from seed 0).
    ok = ok and splitmix64_mix(0) == 0xE220A8397B1DCDAF
    for (f, v, n), want in SELF_TEST_ROWS:
        ok = ok and feature_row(f, v, n) == want
    print(json.dumps({"self_test": "pass" if ok else "FAIL"}))
    return 0 if ok else 1


# FeatureRow(field, value, num_rows) as the C++ computes it; the same
# values are checked in worker/click_data_test.cc.
SELF_TEST_ROWS = [
    ((0, 5, 1000), 922),
    ((3, 0, 7), 1),
    ((25, 0x68FD1E65, 100000), 35170),
    ((12, (1 << 40) - 1, 1 << 62), 4412857768438550321),
]


def hash_rows(np, fields, values, num_rows):
    """FeatureRow over uint64 arrays (numpy wraps uint64 arithmetic mod 2^64)."""
    with np.errstate(over="ignore"):
        z = ((fields + np.uint64(1)) << np.uint64(FIELD_SHIFT)) + values
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z % np.uint64(num_rows)


def read_tsv(np, path, num_dense, max_examples):
    """Reads a Criteo-format TSV file: (labels [N], dense [N, D], values [N, F])."""
    labels, dense, values = [], [], []
    num_fields = None
    with open(path, "r") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cells = line.split("\t")
            if num_fields is None:
                num_fields = len(cells) - 1 - num_dense
                if num_fields < 1:
                    sys.exit(f"{path}:{number}: {len(cells)} columns, "
                             f"expected more than 1 + {num_dense}")
            if len(cells) != 1 + num_dense + num_fields:
                sys.exit(f"{path}:{number}: {len(cells)} columns, "
                         f"expected {1 + num_dense + num_fields}")
            if cells[0] not in ("0", "1"):
                sys.exit(f"{path}:{number}: column 1 (label): not 0 or 1")
            labels.append(float(cells[0]))
            dense.append([int(c) if c else 0 for c in cells[1:1 + num_dense]])
            values.append([int(c, 16) + 1 if c else 0
                           for c in cells[1 + num_dense:]])
            if max_examples and len(labels) >= max_examples:
                break
    if not labels:
        sys.exit(f"{path}: no examples")
    labels = np.asarray(labels, dtype=np.float32)
    dense = np.log1p(np.maximum(np.asarray(dense, dtype=np.float64), 0)
                     ).astype(np.float32).reshape(len(labels), num_dense)
    values = np.asarray(values, dtype=np.uint64)
    return labels, dense, values


def auc(np, scores, labels):
    """Mann-Whitney AUC with average ranks for ties (as worker/click_data.h)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    start = 0
    while start < len(s):
        end = start + 1
        while end < len(s) and s[end] == s[start]:
            end += 1
        ranks[start:end] = 0.5 * (start + 1 + end)
        start = end
    pos = labels[order] > 0.5
    p = float(pos.sum())
    n = len(s) - p
    if p == 0 or n == 0:
        return 0.5
    return float((ranks[pos].sum() - p * (p + 1) / 2) / (p * n))


def log_loss(np, probabilities, labels):
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(labels > 0.5, np.log(p), np.log1p(-p))))


def main(argv):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np  # noqa: E402 (after the thread settings)
    if args.self_test:
        return self_test(np)
    import torch  # noqa: E402
    from torch import nn  # noqa: E402

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_y, train_x, train_v = read_tsv(np, args.train, args.num_dense,
                                         args.max_examples)
    test_y, test_x, test_v = read_tsv(np, args.test, args.num_dense,
                                      args.max_examples)
    num_fields = train_v.shape[1]
    if test_v.shape[1] != num_fields:
        sys.exit(f"{args.test}: {test_v.shape[1]} categorical columns, "
                 f"{args.train} has {num_fields}")
    fields = np.arange(num_fields, dtype=np.uint64)[None, :]

    def rows_of(values):
        return torch.from_numpy(
            hash_rows(np, fields, values, args.num_rows).astype(np.int64))

    train_r, test_r = rows_of(train_v), rows_of(test_v)
    train_y, test_y_t = torch.from_numpy(train_y), torch.from_numpy(test_y)
    train_x, test_x = torch.from_numpy(train_x), torch.from_numpy(test_x)

    dlrm = args.model == "dlrm"
    dim = args.dim if dlrm else 1
    bottom = [int(w) for w in args.bottom_mlp.split(",") if w] if dlrm else []
    top = [int(w) for w in args.top_mlp.split(",") if w] if dlrm else []
    if dlrm and (not bottom or bottom[-1] != dim):
        sys.exit("--bottom_mlp: the last width must equal --dim")

    def linear(fan_in, fan_out):
        layer = nn.Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = nn.ModuleList()
            for _ in range(num_fields):
                t = nn.EmbeddingBag(args.num_rows, dim, mode="sum",
                                    sparse=True)
                bound = 1.0 / dim ** 0.5
                nn.init.uniform_(t.weight, -bound, bound)
                if not dlrm:
                    nn.init.zeros_(t.weight)
                self.tables.append(t)
            if not dlrm:
                self.bias = nn.Parameter(torch.zeros(1))
                return
            layers, fan_in = [], args.num_dense
            for w in bottom:
                layers += [linear(fan_in, w), nn.ReLU()]
                fan_in = w
            self.bottom = nn.Sequential(*layers)
            pairs = (num_fields + 1) * num_fields // 2
            layers, fan_in = [], dim + pairs
            for w in top:
                layers += [linear(fan_in, w), nn.ReLU()]
                fan_in = w
            layers.append(linear(fan_in, 1))
            self.top = nn.Sequential(*layers)
            li, lj = zip(*[(i, j) for i in range(num_fields + 1)
                           for j in range(i)])
            self.li, self.lj = torch.tensor(li), torch.tensor(lj)

        def forward(self, x, r):
            b = r.shape[0]
            offsets = torch.arange(b)
            emb = [t(r[:, f], offsets) for f, t in enumerate(self.tables)]
            if not dlrm:
                return self.bias + torch.stack(emb, 1).sum(1).squeeze(-1)
            z0 = self.bottom(x)
            v = torch.stack([z0] + emb, 1)          # [B, F + 1, d]
            zz = torch.bmm(v, v.transpose(1, 2))    # [B, F + 1, F + 1]
            dots = zz[:, self.li, self.lj]          # [B, pairs]
            return self.top(torch.cat([z0, dots], 1)).squeeze(-1)

    model = Model()
    sparse_params = [p for t in model.tables for p in t.parameters()]
    table_ids = {id(p) for p in sparse_params}
    dense_params = [p for p in model.parameters() if id(p) not in table_ids]
    sparse_opt = torch.optim.Adagrad(sparse_params, lr=args.lr)
    if args.dense_optimizer == "adagrad":
        dense_opt = torch.optim.Adagrad(dense_params, lr=args.dense_lr)
    elif args.dense_optimizer == "sgd":
        dense_opt = torch.optim.SGD(dense_params, lr=args.dense_lr)
    else:
        dense_opt = torch.optim.Adam(dense_params, lr=args.dense_lr)
    loss_fn = nn.BCEWithLogitsLoss()  # mean, numerically stable

    def evaluate():
        model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(test_y), 4096):
                out.append(torch.sigmoid(model(test_x[s:s + 4096],
                                               test_r[s:s + 4096])))
        model.train()
        p = torch.cat(out).numpy()
        return log_loss(np, p, test_y), auc(np, p, test_y)

    print(json.dumps({"config": {
        "model": args.model, "train": len(train_y), "test": len(test_y),
        "num_dense": args.num_dense, "num_fields": num_fields, "dim": dim,
        "bottom_mlp": bottom, "top_mlp": top, "num_rows": args.num_rows,
        "batch_size": args.batch_size, "lr": args.lr,
        "dense_optimizer": args.dense_optimizer, "dense_lr": args.dense_lr,
        "sparse_optimizer": "adagrad", "threads": args.threads,
        "torch": torch.__version__}}), flush=True)
    n = len(train_y)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        for s in range(0, n, args.batch_size):
            logits = model(train_x[s:s + args.batch_size],
                           train_r[s:s + args.batch_size])
            loss = loss_fn(logits, train_y[s:s + args.batch_size])
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
        seconds = time.perf_counter() - start
        test_loss, test_auc = evaluate()
        print(json.dumps({"epoch": epoch, "seconds": round(seconds, 4),
                          "samples_per_sec": round(n / seconds, 1),
                          "test_log_loss": round(test_loss, 6),
                          "test_auc": round(test_auc, 6)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
