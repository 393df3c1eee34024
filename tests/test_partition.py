"""Range partitioning across shards, and the flat-buffer layout."""

import pytest

from rayps.protos.layout import DTYPE, FlatLayout, TensorSpec
from rayps.errors import ConfigError
from rayps.ps.core.partition import ShardRange, partition


@pytest.mark.parametrize("numel, servers", [(1, 1), (10, 1), (10, 3), (10, 10), (1001, 7), (4096, 4)])
def test_ranges_are_contiguous_and_cover_every_element(numel, servers):
    ranges = partition(numel, servers)
    assert [r.shard_id for r in ranges] == list(range(servers))
    assert ranges[0].lo == 0
    assert ranges[-1].hi == numel
    assert all(a.hi == b.lo for a, b in zip(ranges, ranges[1:]))
    assert sum(r.size for r in ranges) == numel


@pytest.mark.parametrize("numel, servers", [(10, 3), (1001, 7), (7, 6), (4096, 4)])
def test_shard_sizes_differ_by_at_most_one(numel, servers):
    sizes = [r.size for r in partition(numel, servers)]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= 1


def test_larger_shards_come_first():
    assert partition(10, 3) == [ShardRange(0, 0, 4), ShardRange(1, 4, 7), ShardRange(2, 7, 10)]


@pytest.mark.parametrize("servers", [0, -1])
def test_fewer_than_one_server_is_rejected(servers):
    with pytest.raises(ConfigError, match=rf"servers \({servers}\) must be >= 1"):
        partition(10, servers)


def test_more_servers_than_parameters_is_rejected():
    with pytest.raises(ConfigError, match=r"servers \(5\) must not exceed the number of parameters \(4\)"):
        partition(4, 5)


def test_layout_packs_tensors_back_to_back():
    layout = FlatLayout.from_shapes([("w", (4, 3)), ("b", (4,)), ("scale", ())])
    assert layout.tensors == (
        TensorSpec("w", (4, 3), 0), TensorSpec("b", (4,), 12), TensorSpec("scale", (), 16),
    )
    assert [(t.numel, t.end) for t in layout.tensors] == [(12, 12), (4, 16), (1, 17)]
    assert layout.numel == 17
    assert layout.nbytes == 17 * 4


def test_layout_bytes_follow_from_float32_elements():
    layout = FlatLayout.from_shapes([("w", (2, 5))])
    assert DTYPE.itemsize == 4
    assert layout.spec("w").nbytes == 40
    assert layout.nbytes == 40


def test_empty_layout_has_no_elements():
    layout = FlatLayout.from_shapes([])
    assert layout.numel == 0
    assert layout.nbytes == 0


def test_layout_finds_a_tensor_by_name_and_names_a_missing_one():
    layout = FlatLayout.from_shapes([("w", (2, 2)), ("b", (2,))])
    assert layout.spec("b") == TensorSpec("b", (2,), 4)
    with pytest.raises(KeyError, match="no tensor named 'v' in the layout"):
        layout.spec("v")


def test_layout_shapes_are_stored_as_int_tuples():
    import numpy as np
    layout = FlatLayout.from_shapes([("w", [np.int64(3), np.int64(2)])])
    assert layout.spec("w").shape == (3, 2)
    assert all(type(d) is int for d in layout.spec("w").shape)
