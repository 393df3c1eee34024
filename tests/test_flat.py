"""FlatParams: a model's parameters and gradients as views of two flat float32 buffers."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rayps.errors import ShapeError
from rayps.worker.loop.flat import FlatParams


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, generator=gen), torch.randn(5, 2, generator=gen)


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean()


def inside(tensor, buffer):
    start = buffer.data_ptr()
    end = start + buffer.numel() * buffer.element_size()
    return start <= tensor.data_ptr() and tensor.data_ptr() + tensor.numel() * tensor.element_size() <= end


def test_layout_lists_every_parameter_in_order_with_its_offset():
    flat = FlatParams(small_model())
    assert [(t.name, t.shape, t.offset) for t in flat.layout.tensors] == [
        ("0.weight", (4, 3), 0), ("0.bias", (4,), 12), ("2.weight", (2, 4), 16), ("2.bias", (2,), 24),
    ]
    assert flat.numel == 26
    assert flat.params.shape == (26,)
    assert flat.grads.shape == (26,)


def test_flat_buffer_starts_with_the_model_values():
    model = small_model()
    expected = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    flat = FlatParams(model)
    assert torch.equal(flat.params, expected)


def test_parameters_are_views_of_the_flat_buffer():
    model = small_model()
    flat = FlatParams(model)
    for p, spec in zip(model.parameters(), flat.layout.tensors):
        assert inside(p, flat.params)
        assert p.data_ptr() == flat.params[spec.offset:].data_ptr()


def test_writing_the_flat_buffer_changes_the_model_output():
    model = small_model()
    flat = FlatParams(model)
    x, _ = batch()
    with torch.no_grad():
        flat.params.zero_()
        flat.params[24:26] = torch.tensor([1.5, -2.0])  # the last layer's bias
    out = model(x)
    assert torch.equal(out, torch.tensor([[1.5, -2.0]]).expand(5, 2))


def test_load_sets_the_model_parameters_from_a_numpy_vector():
    model = small_model()
    flat = FlatParams(model)
    values = np.arange(flat.numel, dtype=np.float32)
    flat.load(values)
    assert torch.equal(model[0].weight, torch.arange(12, dtype=torch.float32).reshape(4, 3))
    assert torch.equal(model[2].bias, torch.tensor([24.0, 25.0]))


def test_load_rejects_a_vector_of_the_wrong_size():
    model = small_model()
    flat = FlatParams(model)
    before = flat.params.clone()
    with pytest.raises(ShapeError, match=r"expected 26 parameters, got shape \(25,\)"):
        flat.load(np.zeros(25, dtype=np.float32))
    assert torch.equal(flat.params, before)


def test_backward_lands_gradients_in_the_flat_buffer():
    model = small_model()
    reference = copy.deepcopy(model)
    flat = FlatParams(model)
    x, y = batch()

    loss_of(model, x, y).backward()
    loss_of(reference, x, y).backward()

    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(flat.grads, expected, rtol=0, atol=0)
    assert flat.grads.abs().sum() > 0
    for p in model.parameters():
        assert inside(p.grad, flat.grads)


def test_host_grads_is_a_numpy_view_of_the_gradients():
    model = small_model()
    flat = FlatParams(model)
    x, y = batch()
    loss_of(model, x, y).backward()
    host = flat.host_grads()
    assert host.dtype == np.float32
    np.testing.assert_array_equal(host, flat.grads.numpy())
    flat.grads.add_(1.0)
    np.testing.assert_array_equal(host, flat.grads.numpy())  # a view on CPU, not a copy


def test_zero_grad_zeroes_the_flat_gradients():
    model = small_model()
    flat = FlatParams(model)
    x, y = batch()
    loss_of(model, x, y).backward()
    flat.zero_grad()
    assert torch.count_nonzero(flat.grads) == 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_zero_grad_rebinds_gradients_a_user_set_to_none():
    model = small_model()
    reference = copy.deepcopy(model)
    flat = FlatParams(model)
    x, y = batch()
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())

    flat.zero_grad()
    loss_of(model, x, y).backward()
    loss_of(reference, x, y).backward()

    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(flat.grads, expected, rtol=0, atol=0)


def test_zero_grad_rebinds_a_gradient_replaced_by_another_tensor():
    model = small_model()
    flat = FlatParams(model)
    model[0].bias.grad = torch.ones(4)
    flat.zero_grad()
    assert model[0].bias.grad.data_ptr() == flat.grads[12:].data_ptr()
    model[0].bias.grad.fill_(3.0)
    assert torch.equal(flat.grads[12:16], torch.full((4,), 3.0))


def test_gradients_accumulate_over_two_backwards_like_plain_torch():
    model = small_model()
    reference = copy.deepcopy(model)
    flat = FlatParams(model)
    for seed in (1, 2):
        x, y = batch(seed)
        loss_of(model, x, y).backward()
        loss_of(reference, x, y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(flat.grads, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64])
def test_parameters_the_shards_cannot_train_are_refused_by_name_and_dtype(dtype):
    model = small_model().to(dtype)
    with pytest.raises(ShapeError, match=rf"parameter '0.weight' is {dtype}; trained parameters must be float32"):
        FlatParams(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters_keep_their_dtype_over_float32_master_weights(dtype):
    model = small_model().to(dtype)
    flat = FlatParams(model)
    assert flat.params.dtype == torch.float32 and flat.numel == 26
    master = np.linspace(-1, 1, 26, dtype=np.float32)
    flat.load(master)
    assert model[0].weight.dtype == dtype  # cast on the way in
    torch.testing.assert_close(model[0].weight.reshape(-1).float(),
                               torch.from_numpy(master[:12]).to(dtype).float(), rtol=0, atol=0)
    flat.zero_grad()
    x, y = batch()
    loss_of(model, x.to(dtype), y.to(dtype)).backward()
    grads = flat.host_grads()  # cast up on the way out
    assert grads.dtype == np.float32
    np.testing.assert_array_equal(grads[:12], model[0].weight.grad.reshape(-1).float().numpy())
    assert np.abs(grads).sum() > 0


def test_a_tied_parameter_is_trained_once_and_stays_tied():
    torch.manual_seed(0)
    emb, out = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
    out.weight = emb.weight
    model = nn.Sequential(emb, out)
    flat = FlatParams(model)
    assert [t.name for t in flat.layout.tensors] == ["0.weight"] and flat.numel == 24
    flat.load(np.arange(24, dtype=np.float32))
    assert model[1].weight is model[0].weight
    assert float(model[1].weight.detach()[5, 3]) == 23.0


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_persistent_buffers_pack_into_float64_with_integer_entries_marked():
    model = bn_model()
    model.register_buffer("scratch", torch.ones(1000), persistent=False)  # derived: stays on the worker
    flat = FlatParams(model)
    names = [(t.name, t.shape) for t in flat.buffers.layout.tensors]
    assert names == [("1.running_mean", (4,)), ("1.running_var", (4,)), ("1.num_batches_tracked", ())]
    model.train()
    model(torch.randn(8, 3))
    packed = flat.buffers.pack()
    assert packed.dtype == np.float64 and packed.shape == (9,)
    np.testing.assert_array_equal(packed[:4], model[1].running_mean.double().numpy())
    assert packed[8] == 1.0 and flat.buffers.integer.tolist() == [False] * 8 + [True]


def test_loading_buffers_sets_them_in_each_buffers_own_dtype():
    model = bn_model()
    flat = FlatParams(model)
    values = np.array([0.5, 1, 2, 3, 4, 5, 6, 7, 41], dtype=np.float64)
    flat.load(flat.host_params().copy(), values)
    assert model[1].running_var.tolist() == [4, 5, 6, 7]
    assert model[1].num_batches_tracked.dtype == torch.int64 and int(model[1].num_batches_tracked) == 41


def test_frozen_parameters_stay_out_of_the_flat_buffer():
    model = small_model()
    model[0].requires_grad_(False)
    flat = FlatParams(model)
    assert [t.name for t in flat.layout.tensors] == ["2.weight", "2.bias"]
    assert flat.numel == 10
