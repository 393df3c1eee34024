"""The training context: what a loop on one worker sees, whether the system wrote the loop or the user did.

A loop takes the worker's batches from ``batches()``, computes a loss on
``model``, backpropagates it through ``backward(loss)`` and calls ``step()``,
which is the push of the gradient to the shards and the pull of the new
parameters (the consistency mode decides how long it waits). ``report()``
sends metrics to the job's history, progress line and dashboard. The
system's own loop (``builtin_loop``) is one such loop; ``rayps.train`` runs
the user's.

The contract that keeps a job's guarantees:

- **One ``step()`` per item of ``batches()``.** Every batch is one push, and
  the work queue knows which push carries which batch, so a worker that
  dies is replaced without a batch lost or trained twice. Taking the next
  item before ``step()`` is an error that says so.
- **Local steps** (``local_steps.inner_steps: H``): ``batches()`` yields the
  H batches of an outer step one after another; each one's ``step()`` is an
  inner step with the worker's own optimizer, and the last one's also pushes
  the change the H steps made (worker/loop/local_steps.py).
- **Gradient accumulation** (``accumulate: k``): ``batches()`` yields each
  batch as k micro-batches, and only the last one's ``step()`` pushes.
  ``backward()`` weights each micro-batch's loss by its share of the batch,
  so the push is the whole batch's mean gradient; a loop that calls
  ``loss.backward()`` itself is refused when k > 1.
- **Mixed precision** (``precision: bf16 | fp16``): the model's forward runs
  under ``torch.autocast`` (the worker wraps it); ``autocast()`` is there for
  a loss computed outside the model. In fp16, ``backward()`` scales the loss
  (a dynamic loss scale), and ``step()`` unscales; a gradient that overflowed is not pushed: the scale halves and
  ``batches()`` yields the same batch again, so the loop computes it afresh.
- **The gradient is zeroed when a batch begins**, so ``zero_grad()`` is
  there for loops written for torch and does nothing.
- **Failures**: a push that fails because a shard died or the job rolled
  back is recovered inside ``step()``; the loop carries on with the batches
  the work queue hands out next (it knows which were applied). An error of
  that kind raised in the loop's own code (a sparse table's rows pulled in
  the forward) ends the call; the worker recovers and calls the loop again.
"""

from __future__ import annotations

import inspect
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ...errors import ConfigError, PSError
from ..queue.outer import OuterStep
from .batches import ModelCall, leading_size, take


class LoopError(PSError, RuntimeError):
    """A training loop broke the context's contract (a batch without its step, a step without a batch)."""


@dataclass
class Batch:
    """One item of ``batches()``: a batch, or one micro-batch of it. Unpacks as ``inputs, targets``."""

    inputs: Any
    targets: Any
    weight: torch.Tensor | None  # each example's loss weight, when the data has one (importance sampling)
    size: int  # examples in this item
    share: float  # this item's share of its batch (1.0 without accumulation)
    epoch: int

    def __iter__(self):
        return iter((self.inputs, self.targets))


#: precision -> the dtype torch.autocast runs the forward in
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_forward(model: torch.nn.Module, device_type: str, precision: str) -> None:
    """Make ``model``'s forward run under ``torch.autocast`` in ``precision`` (bf16, fp16), as Accelerate
    does: a loop that calls the model runs it in mixed precision without a word about it."""
    forward = model.forward
    dtype = AUTOCAST_DTYPES[precision]

    def mixed(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)
    model.forward = mixed


class LossScale:
    """A dynamic loss scale for fp16: doubled after ``growth_every`` finite steps, halved on an overflow."""

    def __init__(self, initial: float = 2.0 ** 16, growth_every: int = 2000):
        self.value, self.growth_every, self._finite = initial, growth_every, 0
        self.overflows = 0

    def update(self, finite: bool) -> None:
        if finite:
            self._finite += 1
            if self._finite >= self.growth_every:
                self.value, self._finite = self.value * 2.0, 0
        else:
            self.value, self._finite = max(self.value / 2.0, 1.0), 0
            self.overflows += 1


NO_STEP = ("the next batch was taken before step() for this one: call step() once per item of batches();"
           " every batch is one push")

_current = threading.local()


def get_context() -> "TrainContext":
    """The training context of the loop running in this worker (``rayps.get_context()``)."""
    ctx = getattr(_current, "context", None)
    if ctx is None:
        raise LoopError("get_context() is called from inside a training loop that rayps.train runs on a worker")
    return ctx


def report(metrics: dict) -> None:
    """``rayps.report(metrics)``: the running loop's ``report``."""
    get_context().report(metrics)


class TrainContext:
    """One worker's view of the job, for the loop it runs. ``worker`` is the Worker (trainer.py) behind it."""

    def __init__(self, worker, config: dict | None = None):
        self._w = worker
        plan = worker.plan
        self.config = dict(config or {})  # the loop's own settings (train_loop_config)
        self.model = worker.compute  # the module to call (compiled, when compile is on); its parameters are the shards'
        self.device = worker.flat.device
        self.optimizer = ShardOptimizer(self)
        self.micro_batches = plan.micro_batches
        self.precision = plan.precision
        self._autocast = (None if plan.precision == "fp32" else
                          (self.device.type, AUTOCAST_DTYPES[plan.precision]))
        self.scale = LossScale() if plan.precision == "fp16" else None
        self.epoch = 0
        self.reported: dict = {}
        self._reset()

    # ---- Ray Train's names -------------------------------------------------------------

    def get_world_rank(self) -> int:
        return self._w.plan.worker_id

    def get_world_size(self) -> int:
        return self._w.plan.num_workers

    def get_local_rank(self) -> int:  # one worker per process: the device this worker trains on
        return 0

    @property
    def steps(self) -> int:
        """Pushes this worker has made in this life."""
        return self._w.steps

    # ---- the loop's calls ----------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        """This worker's batches for the whole job (every epoch), leased from the work queue."""
        w = self._w
        while True:
            try:
                unit = w._next_unit()
            except w._retryable as e:  # the lease failed: a recovery is under way
                self._recovered(e)
                continue
            if unit is None:
                return
            self._abandoned = False
            for i, indices in enumerate(unit):
                if w._reached_max_steps():
                    return
                w._next_indices = unit[i + 1] if i + 1 < len(unit) else None  # its ids may be read ahead
                yield from self._items(indices)
                if self._abandoned:  # a step failed and the worker recovered: lease afresh
                    break

    def autocast(self):
        """The forward's mixed-precision context (a no-op in fp32)."""
        if self._autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self._autocast[0], dtype=self._autocast[1])

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (a scalar) for the current item: weighted by its share of the batch
        (accumulation) and scaled (fp16)."""
        if self._item is None:
            raise LoopError("backward() was called with no batch taken: take one from batches() first")
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise LoopError(f"backward() takes a scalar tensor loss, got {type(loss).__name__}"
                            f"{list(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        share = self._item.share
        self._loss += loss.item() * share
        self._backwards += 1
        scale = share * (self.scale.value if self.scale is not None else 1.0)
        (loss * scale if scale != 1.0 else loss).backward()

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - torch's signature
        """Nothing to do: the gradient is zeroed when each batch begins."""

    def step(self) -> bool:
        """The push of this batch's gradient and the pull of the parameters; True when it pushed (the last
        micro-batch of a batch) or, under local steps, took an inner step; False otherwise (an earlier
        micro-batch, or an fp16 overflow)."""
        item, w = self._item, self._w
        if item is None or self._stepped:
            raise LoopError("step() was called twice for one batch (or before any): call it once per item of "
                            "batches(); every batch is one push")
        self._stepped = True
        if self._part < self._parts - 1:
            return False
        if self._parts > 1 and not self._backwards:
            raise LoopError(f"with accumulate: {self._parts}, backpropagate through ctx.backward(loss), which weights"
                            " each micro-batch by its share of the batch; loss.backward() would sum them")
        if self.scale is not None and not self._backwards:
            raise LoopError("with precision: fp16, backpropagate through ctx.backward(loss), which scales the loss;"
                            " step() divides the gradient by that scale")
        if self.scale is not None and not self._unscaled_finite():
            self._redo = True  # the iterator yields this batch again, at the halved scale
            return False
        loss = self._loss if self._backwards else self._reported_loss()
        examples = len(self._indices)
        if self._outer is not None:  # local steps: every batch is an inner step; the outer step's last pushes
            w._inner_step(examples, loss)
            self._outer_loss.append(loss)
            self.epoch = item.epoch
            if self._inner_left:
                return True
            loss, examples = sum(self._outer_loss) / len(self._outer_loss), self._outer.examples
        try:
            w._push(examples, loss, self._computing)
        except w._retryable as e:
            self._recovered(e)
            return False
        self.epoch = item.epoch
        return True

    def report(self, metrics: dict) -> None:
        """Metrics of this worker (name -> number) for the job's history, progress line and dashboard."""
        if not isinstance(metrics, dict) or not metrics:
            raise LoopError(f"report() takes a dict of metric name -> number, got {metrics!r}")
        clean = {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LoopError(f"report(): {name!r}: {value!r} is not a metric name -> number")
            clean[name] = float(value)
        self.reported = clean
        self._w._reported(clean)

    # ---- inside ------------------------------------------------------------------------

    def _reset(self) -> None:
        """No item in hand (a new call of the loop, or after a recovery)."""
        self._item, self._stepped, self._redo, self._abandoned = None, True, False, False
        self._part, self._parts, self._indices, self._loss, self._backwards = 0, 1, (), 0.0, 0
        self._outer, self._outer_loss, self._inner_left = None, [], 0  # local steps: the outer step in hand
        self._computing = time.monotonic()

    def _items(self, indices) -> Iterator[Batch]:
        """One push's items: one batch's (its micro-batches), or under local steps every batch of the outer
        step, each but the last ending in an inner step."""
        if not isinstance(indices, OuterStep):
            self._outer, self._inner_left = None, 0
            yield from self._batch_items(indices, None)
            return
        self._outer, self._outer_loss = indices, []
        for k, (epoch, batch) in enumerate(indices.batches):
            self._inner_left = len(indices.batches) - 1 - k
            yield from self._batch_items(batch, epoch)
            if self._abandoned:
                return

    def _batch_items(self, indices, epoch: int | None) -> Iterator[Batch]:
        """One batch's items (its micro-batches), again from the first while an fp16 overflow asks."""
        w = self._w
        x, y, weight, unit_epoch = w._load(indices)
        epoch = unit_epoch if epoch is None else epoch
        size = leading_size(y) or leading_size(x) or len(indices)
        k = max(1, min(self.micro_batches, size))
        bounds = [round(size * j / k) for j in range(k + 1)]
        parts = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        while True:
            self._computing = w._begin_batch()
            self._indices, self._parts, self._loss, self._backwards, self._redo = indices, len(parts), 0.0, 0, False
            for i, part in enumerate(parts):
                if not self._stepped:
                    raise LoopError(NO_STEP)
                whole = len(parts) == 1
                self._item = Batch(x if whole else take(x, part, size), y if whole else take(y, part, size),
                                   None if weight is None else weight if whole else weight[part],
                                   part.stop - part.start, (part.stop - part.start) / size, epoch)
                self._part, self._stepped = i, False
                yield self._item
                if self._abandoned:
                    return
            if not self._stepped:
                raise LoopError(NO_STEP)
            if not self._redo:
                return

    def _unscaled_finite(self) -> bool:
        flat = self._w.flat
        finite = flat.unscale_grads(self.scale.value)
        self.scale.update(finite)
        if not finite:
            flat.zero_grad()
        return finite

    def _reported_loss(self) -> float:
        return self.reported.get("loss", float("nan"))

    def _recovered(self, error: Exception) -> None:
        self._w._recover(error)
        self._abandoned = True
        self._stepped = True


class ShardOptimizer:
    """The optimizer a loop holds: ``step()`` is the push and pull (the update itself runs on the shards,
    with the job's optimizer config); ``zero_grad()`` does nothing (each batch begins at zero)."""

    def __init__(self, ctx: TrainContext):
        self._ctx = ctx

    def step(self) -> bool:
        return self._ctx.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._ctx.zero_grad(set_to_none)

    def backward(self, loss: torch.Tensor) -> None:
        self._ctx.backward(loss)


def builtin_loop(call: ModelCall, loss_fn) -> Callable[[TrainContext], None]:
    """The loop a ``Job`` runs: the job's loss on the rule's call of the model (batches.py), per item."""
    def loop(ctx: TrainContext) -> None:
        for batch in ctx.batches():
            with ctx.autocast():
                loss, _ = call.loss_and_output(ctx.model, batch.inputs, batch.targets, loss_fn, batch.weight)
            ctx.backward(loss)
            ctx.step()
    return loop


def run_loop(loop: Callable, ctx: TrainContext, builtin: bool = False) -> None:
    """Call ``loop`` with ``ctx`` current (``get_context``). As in Ray Train, a user's loop takes nothing
    or one argument, its config (``train_loop_config``); the built-in loop takes the context."""
    _current.context = ctx
    try:
        if builtin:
            loop(ctx)
        elif _required_args(loop) == 0 and not inspect.signature(loop).parameters:
            loop()
        else:
            loop(ctx.config)
    finally:
        _current.context = None


def _required_args(loop: Callable) -> int:
    params = inspect.signature(loop).parameters.values()
    return len([p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])


def check_loop(loop: Any) -> None:
    """A loop must be a callable taking nothing or one argument: said before any actor starts."""
    if not callable(loop):
        raise ConfigError(f"train_loop_per_worker ({loop!r}) must be a callable")
    try:
        required = _required_args(loop)
    except (TypeError, ValueError):  # no signature to read (a builtin): it is called with the config
        return
    if required > 1:
        raise ConfigError(f"train_loop_per_worker ({getattr(loop, '__name__', loop)}) takes at most one argument, "
                          f"its config (train_loop_config), not {required}; the context is rayps.get_context()")
