"""Losses by name against torch.nn.functional, and how a job names a loss."""

import pytest
import torch
import torch.nn.functional as F

from rayps.errors import ConfigError
from rayps.worker.loop.losses import LOSSES, bce, cross_entropy, kl, mse, resolve_loss


def logits(seed=0, rows=6, classes=5):
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed))


def test_cross_entropy_equals_torch():
    out = logits()
    target = torch.tensor([0, 4, 2, 2, 1, 3])
    assert torch.equal(cross_entropy(out, target), F.cross_entropy(out, target))


def test_mse_equals_torch_and_reshapes_a_flat_target():
    out = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    target = torch.randn(8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(mse(out, target), F.mse_loss(out, target.reshape(8, 1)))


def test_kl_equals_torch_batchmean_of_log_softmax():
    out = logits(3)
    target = torch.softmax(logits(4), dim=-1)
    expected = F.kl_div(F.log_softmax(out, dim=-1), target, reduction="batchmean")
    assert torch.equal(kl(out, target), expected)
    manual = (target * (target.log() - F.log_softmax(out, dim=-1))).sum() / out.shape[0]
    torch.testing.assert_close(kl(out, target), manual)


def test_kl_of_identical_distributions_is_zero():
    out = logits(5)
    value = kl(out, torch.softmax(out, dim=-1))
    assert abs(value.item()) < 1e-6


def test_kl_of_different_distributions_is_positive():
    assert kl(logits(5), torch.softmax(logits(6), dim=-1)).item() > 0.01


def test_bce_equals_torch_on_one_logit_per_example():
    logits, target = torch.tensor([[0.3], [-1.2], [2.0]]), torch.tensor([1.0, 0.0, 1.0])
    assert torch.equal(bce(logits, target), F.binary_cross_entropy_with_logits(logits.reshape(-1), target))


@pytest.mark.parametrize("name, fn", [("cross_entropy", cross_entropy), ("mse", mse), ("bce", bce), ("kl", kl)])
def test_resolve_loss_by_name(name, fn):
    assert resolve_loss(name) is fn


def test_resolve_loss_by_module_and_callable():
    assert resolve_loss("torch.nn.functional:l1_loss") is F.l1_loss
    assert resolve_loss("rayps.worker.loop.losses:mse") is mse


def test_resolve_loss_returns_a_callable_unchanged():
    def my_loss(output, target):
        return (output - target).abs().sum()

    assert resolve_loss(my_loss) is my_loss


def test_resolve_loss_names_the_choices_for_an_unknown_name():
    with pytest.raises(ConfigError, match=r"loss \('hinge'\) must be one of cross_entropy, mse, bce, kl or a 'module:callable'"):
        resolve_loss("hinge")


def test_resolve_loss_names_a_module_that_lacks_the_callable():
    with pytest.raises(ConfigError, match=r"loss \('rayps.worker.loop.losses:hinge'\): module 'rayps.worker.loop.losses' has no 'hinge'"):
        resolve_loss("rayps.worker.loop.losses:hinge")


def test_builtin_losses_are_exactly_the_four_documented():
    assert sorted(LOSSES) == ["bce", "cross_entropy", "kl", "mse"]


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "bce", "kl"])
def test_weighted_losses_are_the_batch_mean_of_weight_times_each_examples_loss(name):
    gen = torch.Generator().manual_seed(7)
    out = torch.randn(6, 3 if name in ("cross_entropy", "kl") else 1, generator=gen)
    target = {"cross_entropy": torch.tensor([0, 2, 1, 1, 0, 2]), "mse": torch.randn(6, generator=gen),
              "bce": torch.tensor([0., 1., 1., 0., 1., 0.]), "kl": torch.softmax(torch.randn(6, 3, generator=gen), -1)}[name]
    weight = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.5])
    loss = LOSSES[name]
    per_example = torch.stack([loss(out[i:i + 1], target[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(loss(out, target, weight=weight), (weight * per_example).mean())
    # weights of one are the plain loss
    torch.testing.assert_close(loss(out, target, weight=torch.ones(6)), loss(out, target))


def test_takes_weight_tells_a_loss_that_accepts_weights_from_one_that_does_not():
    from rayps.worker.loop.losses import takes_weight
    assert takes_weight(cross_entropy)
    assert takes_weight(lambda out, target, **kw: out.sum())
    assert not takes_weight(lambda out, target: out.sum())
