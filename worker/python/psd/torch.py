"""psd.torch: train a torch.nn.Module on psd's parameter servers.

    import psd.torch as pst
    ctx = pst.init(coordinator="127.0.0.1:7070", insecure=True)
    model = Net()
    opt = pst.DistributedOptimizer(model, ctx)   # the job's optimizer runs on the servers
    for x, y in pst.shard(train_set, ctx):       # this rank's batches, all epochs
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()

The job is an EXTERNAL model (proto/job.proto ModelSpec): its config lists the
module's parameters (external_model_spec writes that part). init registers
this process as a psd worker and waits for a rank of a job. The optimizer
checks the module's named_parameters() against the job's and replaces their
values with the servers' (the job's initializer, model.init_seed); step()
pushes the gradients and pulls the next step's parameters into the module's
tensors, in place (no copies in Python: the buffers are the tensors' own
memory). BSP, ASP and SSP are the servers' (JobConfig.consistency); progress
goes to the coordinator, and the last step's report ends this rank.

Only float32, contiguous CPU tensors are supported.
"""

import time

import numpy as np
import torch

from psd import _psd

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


class Context:
    """This process's rank of a job, from init().

    Attributes: job_id, rank, workers, batch_size, epochs, seed,
    consistency ("BSP", "ASP", "SSP"), train_examples, steps_per_epoch,
    total_steps, parameters ([(name, shape)], the job's order), and step
    (steps pushed so far; starts at the job's resume point).
    """

    def __init__(self, worker):
        self._worker = worker
        self.job_id = worker.job_id
        self.rank = worker.rank
        self.workers = worker.workers
        self.batch_size = worker.batch_size
        self.epochs = worker.epochs
        self.seed = worker.seed
        self.consistency = worker.consistency
        self.dataset = worker.dataset
        self.train_examples = worker.train_examples
        self.steps_per_epoch = worker.steps_per_epoch
        self.total_steps = self.steps_per_epoch * self.epochs
        self.parameters = list(zip(worker.parameter_names,
                                   [tuple(s) for s in worker.parameter_shapes]))
        self.step = worker.start_step

    @property
    def epoch(self):
        """The epoch of the next step."""
        return min(self.step // self.steps_per_epoch, self.epochs - 1)

    @property
    def done(self):
        return self.step >= self.total_steps

    @property
    def config_text(self):
        """The job config, protobuf text format."""
        return self._worker.config_text

    def close(self):
        """Leaves the cluster (stops heartbeats). Idempotent."""
        self._worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def init(coordinator, tls_ca_file="", tls_cert_file="", tls_key_file="",
         insecure=False, connect_timeout_s=10.0, assignment_timeout_s=600.0,
         pull_with_push=True):
    """Registers with the coordinator as a worker and waits for a rank.

    Transport security is mutual TLS with the three PEM files (certificates
    from deploy/make_certs.sh, role worker), or plaintext with insecure=True;
    it is process-wide. Raises ValueError for bad options, ConnectionError
    when the coordinator cannot be reached within connect_timeout_s,
    TimeoutError when no job gives this worker a rank within
    assignment_timeout_s, RuntimeError when the job's model is not EXTERNAL.
    """
    worker = _psd.Worker(coordinator, tls_ca_file=tls_ca_file,
                         tls_cert_file=tls_cert_file,
                         tls_key_file=tls_key_file, insecure=insecure,
                         connect_timeout_ms=int(connect_timeout_s * 1000),
                         assignment_timeout_ms=int(assignment_timeout_s * 1000),
                         pull_with_push=pull_with_push)
    return Context(worker)


def external_model_spec(model, init_seed=1):
    """The `model { ... }` block of a job config for `model`, text format.

    Lists model.named_parameters() in order. Raises TypeError naming a
    parameter that is not float32.
    """
    lines = ["model {", "  kind: EXTERNAL", "  init_seed: %d" % init_seed]
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise TypeError("parameter %r: only float32 is supported, got %s"
                            % (name, p.dtype))
        lines.append('  parameters { name: "%s" shape: [%s] }'
                     % (name, ", ".join(str(d) for d in p.shape)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_parameters(model, ctx):
    """The module's parameters in the job's order, checked against it.

    Raises ValueError naming a parameter the job lacks, one the module
    lacks, or one whose shape differs; TypeError naming one that is not
    float32; ValueError for one not on the CPU or not contiguous.
    """
    named = dict(model.named_parameters())
    job = dict(ctx.parameters)
    for name in named:
        if name not in job:
            raise ValueError(
                "parameter %r: the job has no such parameter (it has %s)"
                % (name, ", ".join(job)))
    params = []
    for name, shape in ctx.parameters:
        if name not in named:
            raise ValueError("parameter %r: in the job, but the module has "
                             "no such parameter" % name)
        p = named[name]
        if p.dtype != torch.float32:
            raise TypeError("parameter %r: only float32 is supported, got %s"
                            % (name, p.dtype))
        if tuple(p.shape) != tuple(shape):
            raise ValueError("parameter %r: shape %s in the module, %s in the "
                             "job" % (name, list(p.shape), list(shape)))
        if p.device.type != "cpu":
            raise ValueError("parameter %r: on %s; only CPU tensors are "
                             "supported" % (name, p.device))
        if not p.data.is_contiguous():
            raise ValueError("parameter %r: not contiguous" % name)
        params.append(p)
    return params


class DistributedOptimizer(torch.optim.Optimizer):
    """The job's server-side optimizer, as a torch optimizer.

    Construction checks the module against the job (check_parameters) and
    pulls the parameters of ctx.step into the module. step() pushes the
    gradients of ctx.step (a parameter without a gradient pushes zeros),
    pulls the parameters of the next step into the module, and reports
    progress every report_every_steps steps and at each epoch end; the last
    step's report ends this rank. `evaluate`, if given, is called on rank 0
    with the module at each epoch end and returns the test accuracy to
    report. Raises RuntimeError when the job was cancelled or a call to the
    servers failed (the rank is reported failed).
    """

    def __init__(self, model, ctx, report_every_steps=20, evaluate=None):
        params = check_parameters(model, ctx)
        super().__init__(params, {})
        self._ctx = ctx
        self._model = model
        self._params = params
        self._report_every = report_every_steps
        self._evaluate = evaluate
        # numpy views of the tensors' own memory: pulls write into them.
        self._values = [p.data.numpy() for p in params]
        self._zeros = {}
        self._loss_sum = 0.0
        self._loss_count = 0
        self._window_start = time.monotonic()
        self._window_steps = 0
        self._call(lambda: ctx._worker.pull(ctx.step, self._values))

    def _call(self, fn):
        try:
            return fn()
        except Exception as e:
            if self._ctx._worker.cancelled:
                raise RuntimeError("job %s cancelled" % self._ctx.job_id) from e
            self._ctx._worker.fail("psd.torch: %s" % e)
            raise

    def _grads(self):
        grads = []
        for i, p in enumerate(self._params):
            g = p.grad
            if g is None:
                if i not in self._zeros:
                    self._zeros[i] = np.zeros(p.shape, dtype=np.float32)
                grads.append(self._zeros[i])
                continue
            if g.dtype != torch.float32:
                raise TypeError("parameter %r: gradient of dtype %s; only "
                                "float32 is supported"
                                % (self._ctx.parameters[i][0], g.dtype))
            if g.is_sparse or g.device.type != "cpu":
                raise ValueError("parameter %r: only dense CPU gradients are "
                                 "supported" % self._ctx.parameters[i][0])
            grads.append(g.numpy() if g.is_contiguous()
                         else g.contiguous().numpy())
        return grads

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """Pushes this step's gradients and pulls the next parameters.

        `loss` (a float or a 1-element tensor), or the value `closure`
        returns, goes into the progress reports' mean loss.
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ctx = self._ctx
        if ctx.done:
            raise RuntimeError("job %s: all %d steps are done"
                               % (ctx.job_id, ctx.total_steps))
        grads = self._grads()
        step = ctx.step
        self._call(lambda: ctx._worker.push(step, grads))
        self._call(lambda: ctx._worker.pull(step + 1, self._values))
        ctx.step = step + 1
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_count += 1
        self._window_steps += 1
        epoch_end = ctx.step % ctx.steps_per_epoch == 0
        if epoch_end or ctx.step % self._report_every == 0:
            self._report(epoch_end)
        return loss

    def _report(self, epoch_end):
        ctx = self._ctx
        accuracy = None
        if epoch_end and ctx.rank == 0 and self._evaluate is not None:
            accuracy = float(self._evaluate(self._model))
        seconds = time.monotonic() - self._window_start
        rate = (self._window_steps * ctx.batch_size / seconds
                if seconds > 0 else 0.0)
        loss = self._loss_sum / self._loss_count if self._loss_count else 0.0
        epoch = (ctx.step - 1) // ctx.steps_per_epoch
        stop = ctx._worker.report(epoch, ctx.step, loss, rate, ctx.done,
                                  accuracy)
        self._window_start = time.monotonic()
        self._window_steps = 0
        if epoch_end:
            self._loss_sum, self._loss_count = 0.0, 0
        if stop and not ctx.done:
            raise RuntimeError("job %s cancelled" % ctx.job_id)


def _gather(dataset, index):
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        idx = torch.from_numpy(index)
        return dataset[0][idx], dataset[1][idx]
    return torch.utils.data.default_collate([dataset[int(i)] for i in index])


def shard(dataset, ctx, epoch=None):
    """This rank's batches, as psd_worker visits them.

    `dataset` is a pair (x, y) of tensors indexed by example, or a
    torch.utils.data.Dataset (batches made with default_collate). Its size
    must be the job's training set (ctx.train_examples). Yields the batches
    of `epoch`, or of every epoch left when None, from ctx.step on: rank r
    takes the block ShardIndices(n, r, workers) in the order EpochOrder(seed,
    epoch, r) (worker/dataset.h), ctx.batch_size examples a step,
    ctx.steps_per_epoch steps an epoch. Call opt.step() once per batch.
    """
    n = len(dataset[0]) if isinstance(dataset, (tuple, list)) else len(dataset)
    if n != ctx.train_examples:
        raise ValueError("dataset: %d examples; the job's training set has %d "
                         "(dataset.train_limit)" % (n, ctx.train_examples))
    epochs = range(ctx.epoch, ctx.epochs) if epoch is None else [epoch]
    b, spe = ctx.batch_size, ctx.steps_per_epoch
    for e in epochs:
        order = _psd.epoch_order(n, ctx.rank, ctx.workers, ctx.seed, e)
        first = max(0, ctx.step - e * spe)
        for i in range(first, spe):
            yield _gather(dataset, order[i * b:(i + 1) * b])


def load_fashion_mnist(data_dir=DEFAULT_FASHION_MNIST, train_limit=0,
                       test_limit=0):
    """Fashion-MNIST as psd_worker loads it, as torch tensors.

    Returns ((train_x, train_y), (test_x, test_y)), x [n, 1, 28, 28] float32
    normalised with the training set's mean and std, y int64.
    """
    tx, ty, vx, vy = _psd.load_fashion_mnist(data_dir, train_limit, test_limit)
    as_images = lambda x: torch.from_numpy(x).view(-1, 1, 28, 28)
    return ((as_images(tx), torch.from_numpy(ty)),
            (as_images(vx), torch.from_numpy(vy)))


def load_safetensors(path):
    """A `psd_ctl export` file: ({name: tensor}, metadata, checksum)."""
    tensors, metadata, checksum = _psd.read_safetensors(path)
    return ({k: torch.from_numpy(v) for k, v in tensors.items()}, metadata,
            checksum)
