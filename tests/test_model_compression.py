"""Model compression without Ray: pruning, filter pruning, quantization, distillation's loss, the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rayps.errors import ConfigError
from rayps.launcher.export.variants import export_run
from rayps.launcher.export.config import DistillConfig, ExportConfig, FilterPruneConfig
from rayps.launcher.job.saved_model import load_model, save_model
from rayps.settings import build
from rayps.worker.compress.distill import Distiller, DistillLoss
from rayps.worker.models import cnn, mlp
from rayps.worker.compress.pruning import filter_prune, hold_masks, magnitude_masks, shrink, sparsity_of
from rayps.worker.compress.quantize import ENGINE, quantize
from rayps.worker.compress.variants import ModelSpec, build_model, import_path, state_of


def test_global_and_per_layer_magnitude_pruning_reach_the_sparsity_their_own_way():
    torch.manual_seed(0)
    model = mlp(hidden=(64, 32))
    with torch.no_grad():
        model[4].weight.mul_(100)  # the last layer's weights are far larger: a global threshold spares them
    g = mlp(hidden=(64, 32))
    g.load_state_dict(model.state_dict())
    magnitude_masks(g, 0.5, "global")
    assert sparsity_of(g) == pytest.approx(0.5, abs=1e-3)
    assert float((g[4].weight == 0).float().mean()) < 0.05
    magnitude_masks(model, 0.5, "layer")
    for i in (0, 2, 4):
        assert float((model[i].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match=r"sparsity \(1.2\) must be in \[0, 1\)"):
        magnitude_masks(model, 1.2)


def test_held_masks_keep_pruned_weights_at_zero_through_training():
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    masks = magnitude_masks(model, 0.7)
    hold_masks(model, masks)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(16, 64)), torch.randint(0, 10, (16,))).backward()
        opt.step()
    assert sparsity_of(model) == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("make", [lambda: mlp(hidden=(64, 32)), lambda: cnn()], ids=["mlp", "cnn"])
def test_filter_pruning_removes_units_and_its_plan_rebuilds_the_same_model(make):
    torch.manual_seed(0)
    model, x = make(), torch.randn(6, 64)
    before = sum(p.numel() for p in model.parameters())
    pruned, plan = filter_prune(model, 0.5, x)
    after = sum(p.numel() for p in pruned.parameters())
    assert after < 0.55 * before
    rebuilt = shrink(make(), plan)
    rebuilt.load_state_dict(pruned.state_dict())
    pruned.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), pruned(x))
    assert pruned(x).shape == (6, 10)  # the outputs stay


def test_filter_pruning_keeps_the_largest_units():
    model = mlp(in_features=2, hidden=(4,), num_classes=2)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0], [5, 5], [0.1, 0], [3, 0]]))
    pruned, plan = filter_prune(model, 0.5, torch.randn(1, 2))
    assert plan == {"0": {"out": 2}, "2": {"in": 2}}
    torch.testing.assert_close(pruned[0].weight, torch.tensor([[5.0, 5], [3, 0]]))


def test_the_distillation_loss_is_hintons_and_plain_cross_entropy_on_the_student_alone():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    loss = DistillLoss(10, temperature=3.0, alpha=0.6)
    soft = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    expected = 0.6 * soft + 0.4 * F.cross_entropy(s, y)
    torch.testing.assert_close(loss(torch.cat([s, t], 1), y), expected)
    torch.testing.assert_close(loss(s, y), F.cross_entropy(s, y))
    with pytest.raises(ValueError, match="the model gave 7 outputs; expected 10"):
        loss(torch.randn(8, 7), y)


def test_a_distiller_trains_only_the_student_and_evaluates_as_the_student():
    student, teacher = mlp(hidden=(8,)), mlp(hidden=(16,))
    d = Distiller(student, teacher)
    assert [n for n, _ in d.named_parameters()] == [f"student.{n}" for n, _ in student.named_parameters()]
    x = torch.randn(4, 64)
    d.train()
    assert d(x).shape == (4, 20) and not teacher.training
    d.eval()
    torch.testing.assert_close(d(x), student(x))


def test_static_int8_of_a_convolutional_model_loads_back_from_its_files(tmp_path):
    torch.manual_seed(0)
    model = cnn().eval()
    x = torch.randn(32, 64)
    q = quantize(model, "static", [torch.randn(32, 64) for _ in range(4)], x)
    save_model(tmp_path / "v", q, ModelSpec("rayps.worker.models:cnn"), [1, 64], {"method": "static", "engine": ENGINE})
    back = load_model(tmp_path / "v")
    assert torch.equal(back(x), q(x))
    assert any("quantized" in type(m).__module__ for m in back.modules())  # int8 modules, not float ones


def test_a_float_variant_round_trips_through_safetensors_and_its_plan(tmp_path):
    torch.manual_seed(0)
    model, plan = filter_prune(mlp(hidden=(32,)), 0.5, torch.randn(1, 64))
    spec = ModelSpec("rayps.worker.models:mlp", {"hidden": [32]}, plan)
    save_model(tmp_path / "v", model, spec, [1, 64])
    from safetensors.numpy import load_file  # any safetensors reader takes the file

    assert load_file(str(tmp_path / "v" / "model.safetensors"))["0.weight"].shape == (16, 64)
    meta = json.loads((tmp_path / "v" / "model.json").read_text())
    assert meta["model"] == "rayps.worker.models:mlp" and meta["filter_plan"] == {"0": {"out": 16}, "2": {"in": 16}}
    x = torch.randn(3, 64)
    model.eval()
    torch.testing.assert_close(load_model(tmp_path / "v")(x), model(x))
    rebuilt = build_model(ModelSpec("rayps.worker.models:mlp", {"hidden": [32]}, plan, state_of(model)))
    torch.testing.assert_close(rebuilt(x), model(x))


def test_export_names_what_it_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="is not a run directory"):
        export_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no exported model"):
        export_run(tmp_path)
    save_model(tmp_path, mlp(), ModelSpec(""), [])
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "model": None}))
    with pytest.raises(ConfigError, match="callable with no importable name"):
        export_run(tmp_path)
    assert import_path(lambda: mlp()) is None and import_path(mlp) == "rayps.worker.models:mlp"


def test_the_export_section_is_checked_key_by_key():
    config = build(ExportConfig, {"filter_prune": {"keep": 0.5}, "distill": {"model": "m:f"}}, "export")
    assert config.filter_prune == FilterPruneConfig(0.5) and config.distill == DistillConfig("m:f")
    with pytest.raises(ConfigError, match=r"export.prune: unknown key 'sparse'"):
        build(ExportConfig, {"prune": {"sparse": 0.5}}, "export")
    with pytest.raises(ConfigError, match=r"distill.model \('tiny'\) must name the student as 'module:callable'"):
        build(ExportConfig, {"distill": {"model": "tiny"}}, "export")
    assert np.isfinite(build(ExportConfig, {}, "export").latency_batch)
