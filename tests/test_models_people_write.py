"""The models people write, trained end to end through the public API.

BatchNorm, Dropout, frozen and tied parameters, half-precision weights: each
job runs the real driver, shards and workers, and is compared with what a
plain single-process torch loop gets, or with itself. Whether a model trains
is not a claim about processes: those jobs run their actors on threads of
this process (``in_process``); the golden, bit-identical and killed-shard
jobs run on the shared Ray instance.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray
import torch
from torch import nn
from torch.utils.data import Dataset

import rayps
from rayps.runtime import RAY
from benchmarks.models import accuracy, single_process
from rayps.worker.datasets import digits
from rayps.worker.models import cnn

pytestmark = pytest.mark.slow

EPOCHS = 15
BATCH = 32
LR = 1e-3  # with 15 epochs, both sides near the plateau; asp at 3e-3 varied from 0.925 to 0.978


class Digits(Dataset):
    """The 8x8 digits as a map-style torch Dataset, the way a vision user brings data."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def digit_sets():
    d = digits()
    return {"train": Digits(*d["train"]), "test": Digits(*d["test"])}


def run(tmp_path, runtime=RAY, **kwargs):
    kwargs.setdefault("eval_every_s", 0)
    return rayps.Job(**kwargs).run(output=tmp_path / "run", progress=False, dashboard=False, report=False,
                                   runtime=runtime)


def single_process_accuracy(model_args: dict, batch: int) -> float:
    """The same model, Adam, epochs and seed in a plain torch loop, one step per ``batch`` examples."""
    return single_process(model_args, batch, EPOCHS, LR, seed=0)


@pytest.mark.parametrize("model_args", [{}, {"dropout": 0.3}], ids=["batchnorm", "batchnorm+dropout"])
@pytest.mark.parametrize("mode, transport", [("asp", "grpc"), ("bsp", "ray")])
def test_cnn_trains_as_well_as_a_single_process_loop(in_process, tmp_path, model_args, mode, transport):
    result = run(tmp_path, in_process, model=cnn, model_args=model_args, data=digit_sets(),
                 optimizer={"name": "adam", "lr": LR}, consistency={"mode": mode}, transport=transport,
                 epochs=EPOCHS, batch_size=BATCH)
    # asp steps once per worker batch; bsp once per round, on both workers' batches together
    reference = single_process_accuracy(model_args, BATCH * (2 if mode == "bsp" else 1))
    got = result.summary["test_accuracy"]
    # bsp is deterministic: 2 points. asp's staleness follows the machine's scheduling: on 2 loaded cores
    # (CI) this run has scored 0.944, 0.950 and up to 0.978 against one process's 0.972, so 4 points;
    # a model whose BatchNorm statistics were lost scores near chance (0.1), far below either bar.
    assert got >= reference - (0.04 if mode == "asp" else 0.02), (got, reference)
    x, y = digits()["test"]
    assert accuracy(result.model, x, y) == got  # the returned model is the one that was scored
    bn = result.model[2]
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics
    steps = result.summary["steps"]
    assert int(bn.num_batches_tracked) == max(int(n) for n in steps.values())


@pytest.mark.ray
def test_one_worker_bsp_matches_a_single_process_loop_in_parameters_and_buffers(ray_session, tmp_path):
    seed, epochs, batch = 5, 2, 64
    result = run(tmp_path, model=cnn, data="rayps.worker.datasets:digits", workers=1, servers=2, seed=seed,
                 epochs=epochs, batch_size=batch, consistency={"mode": "bsp"},
                 optimizer={"name": "adam", "lr": 1e-3})

    from rayps.worker.data.sources import resolve_data
    from rayps.worker.queue.sharder import EpochSharder
    torch.manual_seed(seed)
    model = cnn()
    train = resolve_data("rayps.worker.datasets:digits", seed=seed).train
    sharder = EpochSharder(len(train), 1, batch, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    model.train()
    for epoch in range(epochs):
        for indices in sharder.batches(epoch, 0):
            x, y = train.batch(indices)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    got, want = result.model.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    assert int(got["2.num_batches_tracked"]) == epochs * sharder.batches_per_epoch


@pytest.mark.ray
def test_two_bsp_runs_with_one_seed_are_bit_identical(ray_session, tmp_path):
    runs = [run(tmp_path / str(i), model=cnn, model_args={"dropout": 0.3}, workers=2, max_steps=25,
                consistency={"mode": "bsp"}, seed=7) for i in range(2)]
    assert runs[0].params.tobytes() == runs[1].params.tobytes()
    for name, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[name]), name


class FrozenTiedHalf(nn.Module):
    """A frozen random projection, an embedding tied to the output layer, and a bfloat16 layer."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(64, 64)
        self.project.requires_grad_(False)
        self.middle = nn.Linear(64, 16).to(torch.bfloat16)
        self.classes = nn.Embedding(10, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.classes.weight

    def forward(self, x):
        h = self.project(x)
        h = torch.tanh(self.middle(h.to(torch.bfloat16)).float())
        return self.head(h)


def test_frozen_parameters_stay_put_tied_ones_stay_tied_and_bfloat16_trains(in_process, tmp_path):
    torch.manual_seed(0)
    before = FrozenTiedHalf()
    result = run(tmp_path, in_process, model=FrozenTiedHalf, epochs=15, optimizer={"name": "adam", "lr": 3e-3})
    model = result.model
    assert torch.equal(model.project.weight, before.project.weight)  # exactly as given
    assert model.head.weight is model.classes.weight
    assert model.middle.weight.dtype == torch.bfloat16
    assert not torch.equal(model.middle.weight, before.middle.weight)
    assert result.summary["test_accuracy"] >= 0.9  # a plain torch loop of this model: 0.936
    # trained once: one copy of the tied weight in the flat vector, none of the frozen ones
    trained = 64 * 16 + 16 + 10 * 16
    assert result.params.size == trained


@pytest.mark.ray
def test_a_killed_shard_past_the_restart_budget_is_named_in_the_error(ray_session, tmp_path):
    killed = {}

    def kill_shard_0():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["name"] == "ps-shard-0" and actor["namespace"].startswith("rayps-"):
                    try:
                        shard = ray.get_actor("ps-shard-0", actor["namespace"])
                        where = ray.get(shard.where.remote(), timeout=10)
                        while ray.get(shard.stats.remote(), timeout=10)["pushes_applied"] < 20:
                            time.sleep(0.05)  # until training is well under way
                    except Exception:
                        continue
                    os.kill(where["pid"], signal.SIGKILL)
                    killed["pid"] = where["pid"]
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_shard_0, daemon=True)
    killer.start()
    with pytest.raises(rayps.JobError, match=r"^ps-shard-0 died") as caught:  # no restart allowed
        run(tmp_path, epochs=200, debug={"slow_workers": {0: 0.005}}, fault={"max_restarts": 0})
    killer.join(timeout=10)
    assert killed, "the shard was never found to kill"
    assert "worker-0 failed" not in str(caught.value)
