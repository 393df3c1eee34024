"""CUDA workers: the default job, a transformer in fp16 with its loss scale, parameters against a CPU run.

Every test here needs a CUDA device. Where torch sees none, the module is
skipped and says so; where it sees one, nothing is skipped. ``.ci/gpu`` is
the one script that runs them (with what it prints about the device).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rayps
from rayps.worker.loop.batches import to_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="torch sees no CUDA device on this machine")]

ONE_WORKER = dict(workers=1, seed=3, epochs=2, batch_size=64, eval_every_s=0, consistency={"mode": "bsp"},
                  optimizer={"name": "sgd", "lr": 0.5})


def run(tmp_path, name, **keys):
    return rayps.Job(**keys).run(output=tmp_path / name, progress=False, dashboard=False, report=False)


def test_a_batch_of_any_structure_reaches_the_gpu_through_pinned_memory(monkeypatch):
    pinned = []
    original = torch.Tensor.pin_memory

    def pin(self, *args, **kwargs):
        pinned.append(self.shape)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = {"dense": torch.randn(8, 3), "ids": (torch.arange(8), [torch.zeros(8, 2)])}
    moved = to_device(batch, "cuda")
    assert moved["dense"].is_cuda and moved["ids"][0].is_cuda and moved["ids"][1][0].is_cuda
    assert len(pinned) == 3  # every host tensor went through pinned memory, copied without blocking
    torch.testing.assert_close(moved["dense"].cpu(), batch["dense"])


@pytest.mark.ray
def test_cuda_workers_train_the_default_job_to_its_bar(ray_session, tmp_path):
    result = run(tmp_path, "default", num_gpus=0.5)  # two workers share the one GPU a test machine has
    assert result.summary["test_accuracy"] >= 0.95
    placement = result.summary["placement"]
    assert [placement[f"worker-{w}"]["device"] for w in range(2)] == ["cuda", "cuda"]


@pytest.mark.ray
def test_a_cuda_worker_ends_where_a_cpu_worker_does(ray_session, tmp_path):
    cpu = run(tmp_path, "cpu", **ONE_WORKER)
    gpu = run(tmp_path, "gpu", num_gpus=1, **ONE_WORKER)
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-3, atol=1e-4)  # float32 on both; cuBLAS sums differ


@pytest.mark.ray
def test_a_transformer_trains_on_cuda_in_fp16_as_well_as_on_cpu_in_fp32(ray_session, tmp_path):
    keys = dict(model="rayps.worker.models:transformer", data="rayps.worker.datasets:order_tokens", epochs=8,
                optimizer={"name": "adam", "lr": 2e-3}, consistency={"mode": "bsp"}, eval_every_s=0)
    cpu = run(tmp_path, "cpu", **keys)
    gpu = run(tmp_path, "gpu", num_gpus=0.5, precision="fp16", **keys)
    assert np.isfinite(gpu.params).all()
    assert gpu.summary["test_accuracy"] >= cpu.summary["test_accuracy"] - 0.02
