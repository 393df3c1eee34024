"""Batches of any structure: the rule that calls the model, its hooks, and jobs fed tuples, dicts and nests.

A recommender-shaped model takes dense features beside categorical ids,
``forward(dense, ids)``; fed ``((dense, ids), y)`` items or ``({"dense":
..., "ids": ...}, y)`` items it trains through the real driver, shards and
workers (on threads of this process: ``in_process``) as well as the same
model in a plain torch loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import rayps
from rayps.errors import ConfigError
from rayps.worker.loop.batches import ModelCall, check_call, leading_size, structure, to_device

EPOCHS, BATCH, LR, FEATURES, IDS, CLASSES = 6, 32, 1e-2, 8, 40, 4


def task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense features and one categorical id per example; the class needs both."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99)
    w, per_id = truth.normal(size=(FEATURES, CLASSES)), truth.normal(size=(IDS, CLASSES)) * 1.5
    dense = rng.normal(size=(n, FEATURES)).astype(np.float32)
    ids = rng.integers(0, IDS, n)
    y = (dense @ w + per_id[ids]).argmax(axis=1)
    return dense, ids, y


class TwoInputs(nn.Module):
    """Dense features beside an id: the shape of nearly every recommender model."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(FEATURES, 32)
        self.ids = nn.Embedding(IDS, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, dense, ids):
        return self.head(torch.relu(self.dense(dense) + self.ids(ids)))


class OwnLoss(TwoInputs):
    """A model that computes its own loss when given labels (as HuggingFace models do)."""

    def forward(self, dense, ids, labels=None):
        logits = super().forward(dense, ids)
        return logits if labels is None else (nn.functional.cross_entropy(logits, labels), logits)


class Items(Dataset):
    def __init__(self, n: int, seed: int, shape: str):
        self.dense, self.ids, self.y = task(n, seed)
        self.shape = shape

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        dense, ids, y = torch.from_numpy(self.dense[i]), int(self.ids[i]), int(self.y[i])
        if self.shape == "tuple":
            return (dense, ids), y
        if self.shape == "dict":
            return {"dense": dense, "ids": ids}, y
        return {"features": (dense, {"ids": ids})}, y  # nested: the forward hook takes it apart


def one_process_accuracy(batch: int) -> float:
    """The same model, Adam, examples and epochs in a plain torch loop."""
    torch.manual_seed(0)
    model = TwoInputs()
    dense, ids, y = (torch.from_numpy(a) for a in task(2000, 1))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = np.random.default_rng(0)
    for _ in range(EPOCHS):
        perm = torch.from_numpy(order.permutation(len(y)))
        for lo in range(0, len(y), batch):
            i = perm[lo:lo + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(dense[i], ids[i]), y[i]).backward()
            opt.step()
    test_dense, test_ids, test_y = (torch.from_numpy(a) for a in task(500, 2))
    with torch.no_grad():
        return float((model(test_dense, test_ids).argmax(1) == test_y).float().mean())


def nested_forward(model, inputs):
    dense, rest = inputs["features"]
    return model(dense, rest["ids"])


def own_loss(model, inputs, targets):
    return model(*inputs, labels=targets)


@pytest.mark.slow
@pytest.mark.parametrize("shape, hooks, model", [
    ("tuple", {}, TwoInputs), ("dict", {}, TwoInputs), ("nested", {"forward": nested_forward}, TwoInputs),
    ("tuple", {"compute_loss": own_loss}, OwnLoss)], ids=["tuple", "dict", "nested+forward", "own-loss"])
def test_a_two_input_model_trains_on_any_batch_structure_as_well_as_one_process(in_process, tmp_path, shape,
                                                                                hooks, model):
    result = rayps.Job(model=model, data={"train": Items(2000, 1, shape), "test": Items(500, 2, shape)},
                       optimizer={"name": "adam", "lr": LR}, consistency={"mode": "bsp"}, epochs=EPOCHS,
                       batch_size=BATCH, eval_every_s=0, **hooks).run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=in_process)
    reference = one_process_accuracy(BATCH * 2)  # bsp: one step per round of both workers' batches
    got = result.summary["test_accuracy"]
    assert reference >= 0.85, reference  # the task is learnable: the comparison means something
    assert got >= reference - 0.02, (got, reference)


def test_a_batch_the_rule_cannot_call_the_model_with_is_refused_before_any_actor_starts(tmp_path):
    class OneInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            return self.layer(x)

    # no runtime is started: the error comes from planning the job
    with pytest.raises(ConfigError) as error:
        rayps.Job(model=OneInput, data={"train": Items(100, 1, "tuple"), "test": Items(20, 2, "tuple")}).run(
            output=tmp_path / "run", progress=False, dashboard=False, report=False)
    text = str(error.value)
    assert text.startswith("the training data's first batch: its inputs are list(Tensor[2, 8] float32, "
                           "Tensor[2] int64) (targets Tensor[2] int64)"), text
    assert "a tuple or list of inputs is spread as positional arguments, model(*inputs)" in text
    assert "So the job calls model(*inputs), which OneInput.forward(x) cannot take" in text
    assert "give forward=(model, inputs) -> output or compute_loss=" in text


def test_the_rule_spreads_lists_and_dicts_and_passes_anything_else_as_it_is():
    seen = []

    class Echo(nn.Module):
        def forward(self, *args, **kwargs):
            seen.append((len(args), sorted(kwargs)))
            return torch.zeros(1)

    call, t = ModelCall(), torch.zeros(3)
    call.output(Echo(), [t, t])
    call.output(Echo(), {"a": t, "b": t})
    call.output(Echo(), t)
    assert seen == [(2, []), (0, ["a", "b"]), (1, [])]
    check_call(Echo(), call, {"a": t}, t, "batch")  # a forward that takes anything passes the check


def test_a_batch_moves_to_the_device_whole_and_says_its_structure():
    batch = {"dense": torch.zeros(4, 2, dtype=torch.float64), "ids": (torch.arange(4), [torch.ones(4)]), "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"][0] is batch["ids"][0] and moved["n"] == 3 and isinstance(moved["ids"], tuple)
    assert structure(batch) == "dict(dense: Tensor[4, 2] float64, ids: tuple(Tensor[4] int64, list(Tensor[4] " \
                               "float32)), n: int)"
    assert leading_size(batch) == 4 and leading_size([3, "x"]) is None


def test_compute_loss_must_return_a_scalar_loss():
    call = ModelCall(compute_loss=lambda model, x, y: torch.ones(3))
    with pytest.raises(TypeError, match=r"compute_loss must return a scalar tensor loss .*Tensor\[3\] float32"):
        call.loss_and_output(nn.Linear(1, 1), torch.zeros(1), torch.zeros(1), None)


# ---- the knobs: accumulation and clipping ----------------------------------------------------------

class SeenSizes(nn.Module):
    """The bundled MLP, noting the size of every training batch it is called with (workers run on threads
    of this process here, so the class sees them all)."""

    sizes: list[int] = []

    def __init__(self):
        super().__init__()
        from rayps.worker.models import mlp
        self.net = mlp()

    def forward(self, x):
        if self.training:
            SeenSizes.sizes.append(len(x))
        return self.net(x)


def one_worker_bsp(tmp_path, runtime, name: str, **keys):
    return rayps.Job(model=SeenSizes, workers=1, servers=2, seed=5, epochs=2, batch_size=64, eval_every_s=0,
                     consistency={"mode": "bsp"}, optimizer={"name": "sgd", "lr": 0.5}, **keys).run(
        output=tmp_path / name, progress=False, dashboard=False, report=False, runtime=runtime)


def test_k_micro_batches_give_the_gradient_of_the_whole_batch(in_process, tmp_path):
    SeenSizes.sizes.clear()
    whole = one_worker_bsp(tmp_path, in_process, "whole")
    batch = max(SeenSizes.sizes)  # digits' 1,437 examples cut into batches of about 64
    SeenSizes.sizes.clear()
    parts = one_worker_bsp(tmp_path, in_process, "parts", accumulate=4)
    assert max(SeenSizes.sizes) == -(-batch // 4) and len(SeenSizes.sizes) >= 4 * whole.summary["steps"]["0"]
    assert parts.summary["steps"] == whole.summary["steps"]  # one push per batch either way
    torch.testing.assert_close(torch.from_numpy(parts.params), torch.from_numpy(whole.params), rtol=1e-4, atol=1e-5)


def test_clipping_matches_a_torch_loop_with_clip_grad_norm(in_process, tmp_path):
    from rayps.worker.data.sources import resolve_data
    from rayps.worker.queue.sharder import EpochSharder

    result = one_worker_bsp(tmp_path, in_process, "clipped", clip_grad_norm=0.5)
    torch.manual_seed(5)
    model = SeenSizes()
    train = resolve_data("rayps.worker.datasets:digits", seed=5).train
    sharder = EpochSharder(len(train), 1, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    norms = []
    for epoch in range(2):
        for indices in sharder.batches(epoch, 0):
            x, y = train.batch(indices)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
            opt.step()
    assert sum(n > 0.5 for n in norms) >= len(norms) // 2  # the clip was at work on most steps
    want = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(torch.from_numpy(result.params), want, rtol=1e-4, atol=1e-5)
    unclipped = one_worker_bsp(tmp_path, in_process, "unclipped")
    assert not np.allclose(unclipped.params, result.params, atol=1e-3)  # and it changed the outcome


# ---- torch.compile -----------------------------------------------------------------------------------

def test_a_compiled_model_trains_the_same_parameters_as_the_model_itself(in_process, tmp_path):
    """The wiring, with torch.compile's eager backend (inductor compiles for some 20 s a process here: the
    slow test below): the compiled module computes, the flat buffer's parameters are the ones it reads."""
    plain = one_worker_bsp(tmp_path, in_process, "plain")
    compiled = one_worker_bsp(tmp_path, in_process, "compiled", compile={"backend": "eager"})
    torch.testing.assert_close(torch.from_numpy(compiled.params), torch.from_numpy(plain.params), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.slow
def test_an_inductor_compiled_model_trains_the_default_job(in_process, tmp_path):
    result = rayps.Job(compile=True, eval_every_s=0).run(  # the default job, past its own bar
        output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=in_process)
    assert result.summary["test_accuracy"] >= 0.95


def test_compile_takes_true_false_or_torch_compile_options():
    from rayps.launcher.job.config import JobConfig
    from rayps.settings import build
    with pytest.raises(ConfigError, match=r"compile: unknown key \['speed'\]"):
        build(JobConfig, {"compile": {"speed": "max"}}, "job")
    with pytest.raises(ConfigError, match=r"compile \('yes'\) must be true, false or a mapping"):
        build(JobConfig, {"compile": "yes"}, "job")


# ---- mixed precision -----------------------------------------------------------------------------------

class DtypesSeen(TwoInputs):
    dtypes: set = set()

    def forward(self, dense, ids):
        out = super().forward(dense, ids)
        if self.training:
            DtypesSeen.dtypes.add(out.dtype)
        return out


def test_bf16_mixed_precision_trains_a_two_input_model_as_well_as_one_process_in_float32(in_process, tmp_path):
    """torch.autocast in bfloat16 around the forward and the loss (on CPU here; CUDA alike), float32 masters."""
    DtypesSeen.dtypes.clear()
    result = rayps.Job(model=DtypesSeen, data={"train": Items(2000, 1, "tuple"), "test": Items(500, 2, "tuple")},
                       optimizer={"name": "adam", "lr": LR}, consistency={"mode": "bsp"}, epochs=EPOCHS,
                       batch_size=BATCH, eval_every_s=0, precision="bf16").run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=in_process)
    assert DtypesSeen.dtypes == {torch.bfloat16}  # every training forward ran in bfloat16
    assert result.params.dtype == np.float32
    assert result.summary["test_accuracy"] >= one_process_accuracy(BATCH * 2) - 0.02


def test_fp16_mixed_precision_with_a_loss_scale_trains_a_two_input_model_as_well_as_one_process(in_process,
                                                                                                tmp_path):
    """torch.autocast in float16 and a dynamic loss scale (worker/loop/context.py), float32 masters."""
    DtypesSeen.dtypes.clear()
    result = rayps.Job(model=DtypesSeen, data={"train": Items(2000, 1, "tuple"), "test": Items(500, 2, "tuple")},
                       optimizer={"name": "adam", "lr": LR}, consistency={"mode": "bsp"}, epochs=EPOCHS,
                       batch_size=BATCH, eval_every_s=0, precision="fp16").run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=in_process)
    assert DtypesSeen.dtypes == {torch.float16}
    assert result.params.dtype == np.float32 and np.isfinite(result.params).all()
    assert result.summary["test_accuracy"] >= one_process_accuracy(BATCH * 2) - 0.02
