"""LR schedules against torch.optim.lr_scheduler stepped once per update, and config errors."""

import math

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from rayps.errors import ConfigError
from rayps.ps.core.schedules import ScheduleConfig, make_schedule
from rayps.settings import build

BASE = 0.1


def _torch_lrs(make_main, steps, warmup_steps=0, start_factor=None):
    """The lr torch uses for each of ``steps`` updates, warm-up chained as ps.schedules documents."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    if warmup_steps:
        warmup = lr_scheduler.LinearLR(opt, start_factor=start_factor or 1 / warmup_steps,
                                       end_factor=1.0, total_iters=warmup_steps)
        sched = lr_scheduler.SequentialLR(opt, [warmup, make_main(opt)], milestones=[warmup_steps])
    else:
        sched = make_main(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _ours(config, steps, **kwargs):
    schedule = make_schedule(config, BASE, **kwargs)
    return [schedule(step) for step in range(steps)]


WARMUPS = [(0, None), (4, None), (6, 0.25)]
WARMUP_IDS = ["no-warmup", "warmup-default-start", "warmup-start-0.25"]


@pytest.mark.parametrize("warmup_steps, start", WARMUPS, ids=WARMUP_IDS)
def test_constant_matches_torch(warmup_steps, start):
    config = ScheduleConfig(warmup_steps=warmup_steps, warmup_start_factor=start)
    expected = _torch_lrs(lambda opt: lr_scheduler.LambdaLR(opt, lambda _: 1.0), 20, warmup_steps, start)
    np.testing.assert_allclose(_ours(config, 20), expected, rtol=1e-12)


@pytest.mark.parametrize("warmup_steps, start", WARMUPS, ids=WARMUP_IDS)
def test_piecewise_matches_multistep_lr(warmup_steps, start):
    config = ScheduleConfig(name="piecewise", boundaries=[5, 12], factors=[1.0, 0.1, 0.01],
                            warmup_steps=warmup_steps, warmup_start_factor=start)
    expected = _torch_lrs(lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[5, 12], gamma=0.1),
                          30, warmup_steps, start)
    np.testing.assert_allclose(_ours(config, 30), expected, rtol=1e-12)


def test_piecewise_applies_arbitrary_factors_from_each_boundary():
    schedule = make_schedule(ScheduleConfig(name="piecewise", boundaries=(2, 4), factors=(1, 0.5, 2)), BASE)
    assert [schedule(s) for s in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.2, 0.2])
    assert schedule(10**6) == pytest.approx(0.2)


@pytest.mark.parametrize("warmup_steps, start", WARMUPS, ids=WARMUP_IDS)
def test_cosine_matches_cosine_annealing_lr(warmup_steps, start):
    total = 30
    config = ScheduleConfig(name="cosine", total_steps=total, min_lr=0.001,
                            warmup_steps=warmup_steps, warmup_start_factor=start)
    expected = _torch_lrs(
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup_steps, eta_min=0.001),
        total, warmup_steps, start)
    np.testing.assert_allclose(_ours(config, total), expected, rtol=1e-9, atol=1e-12)


def test_cosine_with_a_decay_fraction_holds_the_lr_then_decays_over_the_last_part():
    """Warm-up, stable, decay: torch's constant then CosineAnnealingLR, chained at the hold's end."""
    config = ScheduleConfig(name="cosine", total_steps=40, decay_fraction=0.25)

    def constant_then_cosine(opt):
        return lr_scheduler.SequentialLR(opt, [lr_scheduler.LambdaLR(opt, lambda _: 1.0),
                                               lr_scheduler.CosineAnnealingLR(opt, T_max=10)], milestones=[30])
    np.testing.assert_allclose(_ours(config, 40), _torch_lrs(constant_then_cosine, 40, 0, None), rtol=1e-9,
                               atol=1e-12)


def test_cosine_stays_at_min_lr_past_total_steps():
    schedule = make_schedule(ScheduleConfig(name="cosine", total_steps=10, min_lr=0.001, warmup_steps=2), BASE)
    assert schedule(2) == BASE
    assert schedule(6) == pytest.approx(0.001 + (BASE - 0.001) / 2)  # half way through the decay
    assert schedule(9) > 0.001
    assert [schedule(s) for s in (10, 11, 1000)] == [0.001] * 3


def test_cosine_takes_its_length_from_the_caller_when_unset():
    schedule = make_schedule(ScheduleConfig(name="cosine"), BASE, default_total_steps=8)
    assert schedule(4) == pytest.approx(BASE / 2)
    assert schedule(8) == 0.0
    # an explicit total_steps wins over the caller's default
    explicit = make_schedule(ScheduleConfig(name="cosine", total_steps=4), BASE, default_total_steps=8)
    assert explicit(2) == pytest.approx(BASE / 2)


def test_warmup_rises_linearly_to_base_lr():
    schedule = make_schedule(ScheduleConfig(warmup_steps=4), BASE)
    assert [schedule(s) for s in range(6)] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1])


def test_config_from_yaml_mapping_turns_lists_into_tuples():
    config = build(ScheduleConfig, {"name": "piecewise", "boundaries": [10], "factors": [1, 0.1]},
                   "job.yaml: schedule")
    assert config.boundaries == (10,) and config.factors == (1, 0.1)
    assert config == ScheduleConfig(name="piecewise", boundaries=(10,), factors=(1, 0.1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="step"), "schedule.name ('step') must be one of auto, constant, cosine, piecewise"),
    (dict(name="piecewise", boundaries=[3, 7], factors=[1, 0.1]),
     "schedule.factors has 2 values; piecewise needs len(boundaries) + 1 = 3"),
    (dict(name="piecewise", boundaries=[7, 3], factors=[1, 0.1, 0.01]),
     "schedule.boundaries ([7, 3]) must be strictly increasing"),
    (dict(name="piecewise", boundaries=[0], factors=[1, 0.1]), "schedule.boundaries[0] (0) must be > 0"),
    (dict(name="piecewise", boundaries=[2.5], factors=[1, 0.1]), "schedule.boundaries[0] (2.5) must be an integer"),
    (dict(name="piecewise", boundaries=[2], factors=[1, -0.1]), "schedule.factors[1] (-0.1) must be >= 0"),
    (dict(name="piecewise", boundaries="10", factors=[1]), "schedule.boundaries ('10') must be a list"),
    (dict(name="cosine", boundaries=[3], factors=[1, 0.1]), "schedule.boundaries ((3,)) applies only to piecewise"),
    (dict(total_steps=100), "schedule.total_steps (100) applies only to cosine, not auto"),
    (dict(name="piecewise", factors=[1], min_lr=0.01), "schedule.min_lr (0.01) applies only to cosine"),
    (dict(name="cosine", total_steps=0), "schedule.total_steps (0) must be > 0"),
    (dict(name="cosine", total_steps=5, warmup_steps=5),
     "schedule.total_steps (5) must be greater than schedule.warmup_steps (5)"),
    (dict(warmup_steps=-1), "schedule.warmup_steps (-1) must be >= 0"),
    (dict(name="constant", decay_fraction=0.5), "schedule.decay_fraction (0.5) applies only to cosine, not constant"),
    (dict(name="cosine", decay_fraction=0), "schedule.decay_fraction (0) must be > 0"),
    (dict(name="cosine", decay_fraction=1.5), "schedule.decay_fraction (1.5) must be <= 1"),
    (dict(warmup_start_factor=0.5), "schedule.warmup_start_factor (0.5) needs schedule.warmup_steps > 0"),
    (dict(warmup_steps=3, warmup_start_factor=0), "schedule.warmup_start_factor (0) must be > 0"),
    (dict(warmup_steps=3, warmup_start_factor=1.5), "schedule.warmup_start_factor (1.5) must be <= 1"),
])
def test_bad_config_raises_config_error_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        ScheduleConfig(**kwargs)
    assert message in str(info.value)


def test_cosine_without_any_length_raises_config_error():
    with pytest.raises(ConfigError, match="schedule.total_steps is not set"):
        make_schedule(ScheduleConfig(name="cosine"), BASE)


def test_make_schedule_rejects_lengths_and_floors_it_cannot_honour():
    with pytest.raises(ConfigError, match=r"schedule.total_steps \(3\) must be greater than schedule.warmup_steps \(3\)"):
        make_schedule(ScheduleConfig(name="cosine", warmup_steps=3), BASE, default_total_steps=3)
    with pytest.raises(ConfigError, match=r"schedule.min_lr \(0.5\) must be <= optimizer.lr \(0.1\)"):
        make_schedule(ScheduleConfig(name="cosine", total_steps=10, min_lr=0.5), BASE)
    with pytest.raises(ConfigError, match=r"optimizer.lr \(0\) must be > 0"):
        make_schedule(ScheduleConfig(), 0)


def test_negative_step_raises_value_error():
    schedule = make_schedule(ScheduleConfig(), BASE)
    with pytest.raises(ValueError, match=r"step \(-1\) must be an integer >= 0"):
        schedule(-1)
    assert math.isclose(schedule(0), BASE)
