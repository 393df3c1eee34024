"""Server optimizers against torch.optim's single-tensor path, state round trips, errors."""

import numpy as np
import pytest
import torch

from rayps.errors import ConfigError, ShapeError
from rayps.ps.core.optimizers import OptimizerConfig, make_optimizer
from rayps.settings import build

SIZE = 257  # odd, so vectorised kernels also run their scalar tails
STEPS = 20

# (id, our config, torch class, torch kwargs). Torch kwargs are spelled out rather
# than derived from the config, so None-resolution is checked against torch's defaults.
CASES = [
    ("sgd", dict(name="sgd"), torch.optim.SGD, {}),
    ("sgd-momentum", dict(name="sgd", momentum=0.9), torch.optim.SGD, dict(momentum=0.9)),
    ("sgd-momentum-weight-decay", dict(name="sgd", momentum=0.8, weight_decay=1e-2),
     torch.optim.SGD, dict(momentum=0.8, weight_decay=1e-2)),
    ("sgd-nesterov-weight-decay", dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=5e-3),
     torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=5e-3)),
    ("adagrad", dict(name="adagrad"), torch.optim.Adagrad, {}),
    ("adagrad-accumulator-weight-decay-eps",
     dict(name="adagrad", initial_accumulator_value=0.1, weight_decay=1e-2, eps=1e-6),
     torch.optim.Adagrad, dict(initial_accumulator_value=0.1, weight_decay=1e-2, eps=1e-6)),
    ("adam", dict(name="adam"), torch.optim.Adam, {}),
    ("adam-l2-weight-decay-betas", dict(name="adam", weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6),
     torch.optim.Adam, dict(weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6)),
    ("adamw", dict(name="adamw"), torch.optim.AdamW, {}),
    ("adamw-decoupled-weight-decay", dict(name="adamw", weight_decay=0.1, betas=(0.85, 0.995)),
     torch.optim.AdamW, dict(weight_decay=0.1, betas=(0.85, 0.995))),
]


def _data(seed=0, steps=STEPS):
    """Initial params, read-only gradients and a non-monotone lr per step."""
    rng = np.random.default_rng(seed)
    init = rng.standard_normal(SIZE).astype(np.float32)
    grads = []
    for _ in range(steps):
        g = rng.standard_normal(SIZE).astype(np.float32)
        g.setflags(write=False)
        grads.append(g)
    lrs = [0.05 * (1 + 0.5 * np.sin(i)) for i in range(steps)]
    return init, grads, lrs


def _torch_run(cls, kwargs, init, grads, lrs):
    param = torch.nn.Parameter(torch.from_numpy(init.copy()))
    opt = cls([param], lr=lrs[0], foreach=False, **kwargs)
    for grad, lr in zip(grads, lrs):
        param.grad = torch.from_numpy(grad.copy())
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return param.detach().numpy()


@pytest.mark.parametrize("config, cls, kwargs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_update_matches_torch_with_changing_lr(config, cls, kwargs):
    init, grads, lrs = _data()
    params = init.copy()
    opt = make_optimizer(OptimizerConfig(lr=0.05, **config), SIZE)
    for grad, lr in zip(grads, lrs):
        opt.step(params, grad, lr)

    expected = _torch_run(cls, kwargs, init, grads, lrs)
    assert opt.steps == STEPS
    assert not np.allclose(params, init)  # the updates really moved the parameters
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_loaded_state_resumes_identically(config):
    init, grads, lrs = _data(seed=1)
    cfg = OptimizerConfig(**config)
    first = make_optimizer(cfg, SIZE)
    params = init.copy()
    for grad, lr in zip(grads[:10], lrs[:10]):
        first.step(params, grad, lr)
    state = first.state_dict()
    saved_params = params.copy()
    for grad, lr in zip(grads[10:], lrs[10:]):
        first.step(params, grad, lr)

    second = make_optimizer(cfg, SIZE)
    second.load_state_dict(state)
    resumed = saved_params.copy()
    for grad, lr in zip(grads[10:], lrs[10:]):
        second.step(resumed, grad, lr)

    assert second.steps == first.steps == STEPS
    np.testing.assert_array_equal(resumed, params)


def test_state_dict_is_a_snapshot_not_a_view():
    opt = make_optimizer(OptimizerConfig(name="adam"), 4)
    params = np.zeros(4, dtype=np.float32)
    opt.step(params, np.ones(4, dtype=np.float32), 0.1)
    state = opt.state_dict()
    before = state["exp_avg"].copy()
    opt.step(params, np.ones(4, dtype=np.float32), 0.1)
    assert state["step"] == 1
    np.testing.assert_array_equal(state["exp_avg"], before)


def test_load_state_dict_rejects_other_algorithm_and_size():
    adam_state = make_optimizer(OptimizerConfig(name="adam"), 4).state_dict()
    with pytest.raises(ConfigError, match="'adam'.*'adamw'"):
        make_optimizer(OptimizerConfig(name="adamw"), 4).load_state_dict(adam_state)
    with pytest.raises(ShapeError, match="exp_avg"):
        make_optimizer(OptimizerConfig(name="adam"), 5).load_state_dict(adam_state)


@pytest.mark.parametrize("config", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_step_leaves_grad_untouched(config):
    # A writable gradient, so a rule that wrongly skipped its scratch copy would show here.
    opt = make_optimizer(OptimizerConfig(lr=0.05, **config), 3)
    params = np.ones(3, dtype=np.float32)
    grad = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    opt.step(params, grad, 0.1)
    opt.step(params, grad, 0.1)
    np.testing.assert_array_equal(grad, [1.0, -2.0, 3.0])


@pytest.mark.parametrize("params, grad, match", [
    (np.zeros(5, np.float32), np.zeros(4, np.float32), "params has 5 values; this optimizer holds 4"),
    (np.zeros(4, np.float32), np.zeros(3, np.float32), "grad has 3 values; this optimizer holds 4"),
    (np.zeros(4, np.float32), np.zeros(4, np.float64), "grad must be a 1-D float32 array, got float64"),
    (np.zeros((2, 2), np.float32), np.zeros(4, np.float32), r"params must be a 1-D float32 array"),
])
def test_step_rejects_wrong_shape_or_dtype(params, grad, match):
    opt = make_optimizer(OptimizerConfig(name="adam"), 4)
    with pytest.raises(ShapeError, match=match):
        opt.step(params, grad, 0.1)
    assert opt.steps == 0  # a rejected update leaves the state untouched


def test_step_rejects_read_only_params_and_negative_lr():
    opt = make_optimizer(OptimizerConfig(), 2)
    frozen = np.zeros(2, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ShapeError, match="writable"):
        opt.step(frozen, np.zeros(2, np.float32), 0.1)
    with pytest.raises(ValueError, match=r"lr \(-0.1\) must be a number >= 0"):
        opt.step(np.zeros(2, np.float32), np.zeros(2, np.float32), -0.1)


def test_unset_weight_decay_and_eps_take_torch_defaults():
    assert OptimizerConfig(name="adamw").resolved_weight_decay == 0.01
    assert OptimizerConfig(name="adam").resolved_weight_decay == 0.0
    assert OptimizerConfig(name="sgd").resolved_weight_decay == 0.0
    assert OptimizerConfig(name="adamw", weight_decay=0).resolved_weight_decay == 0.0
    assert OptimizerConfig(name="adagrad").resolved_eps == 1e-10
    assert OptimizerConfig(name="adam").resolved_eps == 1e-8
    assert OptimizerConfig(name="adam", eps=1e-6).resolved_eps == 1e-6


def test_config_from_yaml_mapping_turns_betas_list_into_tuple():
    config = build(OptimizerConfig, {"name": "adam", "lr": 1, "betas": [0.8, 0.99]}, "job.yaml: optimizer")
    assert config.betas == (0.8, 0.99)
    assert config == OptimizerConfig(name="adam", lr=1, betas=(0.8, 0.99))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="rmsprop"), "optimizer.name ('rmsprop') must be one of adagrad, adam, adamw, delayed_nesterov, sgd"),
    (dict(lr=-1), "optimizer.lr (-1) must be > 0"),
    (dict(lr=0), "optimizer.lr (0) must be > 0"),
    (dict(lr="fast"), "optimizer.lr ('fast') must be a number"),
    (dict(name="sgd", momentum=-0.5), "optimizer.momentum (-0.5) must be >= 0"),
    (dict(name="sgd", nesterov=True), "optimizer.nesterov needs optimizer.momentum > 0"),
    (dict(name="sgd", nesterov="yes", momentum=0.9), "optimizer.nesterov ('yes') must be true or false"),
    (dict(weight_decay=-1e-4), "optimizer.weight_decay (-0.0001) must be >= 0"),
    (dict(name="adam", betas=(0.9,)), "optimizer.betas ((0.9,)) must be a pair"),
    (dict(name="adam", betas=(0.9, 1.0)), "optimizer.betas[1] (1.0) must be < 1"),
    (dict(name="adam", eps=0), "optimizer.eps (0) must be > 0"),
    (dict(name="adagrad", initial_accumulator_value=-1), "optimizer.initial_accumulator_value (-1) must be >= 0"),
    (dict(name="adam", momentum=0.9), "optimizer.momentum (0.9) applies only to sgd, delayed_nesterov, not adam"),
    (dict(name="sgd", betas=(0.8, 0.9)), "optimizer.betas ((0.8, 0.9)) applies only to adam, adamw, not sgd"),
    (dict(name="sgd", eps=1e-8), "optimizer.eps (1e-08) applies only to adagrad, adam, adamw, not sgd"),
    (dict(name="adam", initial_accumulator_value=0.1), "optimizer.initial_accumulator_value (0.1) applies only to adagrad"),
])
def test_bad_config_raises_config_error_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(**kwargs)
    assert message in str(info.value)


def test_bad_size_raises_shape_error():
    with pytest.raises(ShapeError, match=r"optimizer size \(-1\) must be a non-negative integer"):
        make_optimizer(OptimizerConfig(), -1)


@pytest.mark.parametrize("config, kwargs", [(dict(name="sgd"), {}), (dict(name="sgd", momentum=0.9), dict(momentum=0.9))],
                         ids=["sgd", "sgd-momentum"])
def test_sgd_without_weight_decay_is_torchs_sgd_bit_for_bit(config, kwargs):
    # the step is BLAS saxpy: the same single rounding as torch's param.add_(grad, alpha=-lr)
    init, grads, lrs = _data()
    params = init.copy()
    opt = make_optimizer(OptimizerConfig(lr=0.05, **config), SIZE)
    for grad, lr in zip(grads, lrs):
        opt.step(params, grad, lr)
    np.testing.assert_array_equal(params, _torch_run(torch.optim.SGD, kwargs, init, grads, lrs))
