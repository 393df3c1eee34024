"""Data sources, resolve_data's input forms, holdout splits and the epoch sharder."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import IterableDataset, TensorDataset

from rayps.errors import ConfigError, ShapeError
from rayps.worker.data.sources import (
    ArraySource,
    DataSource,
    Splits,
    TorchDatasetSource,
    resolve_data,
)
from rayps.worker.queue.sharder import EpochSharder


def make_arrays(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Example i has feature row [i, -i] and label i % 3, so batches can be checked by value."""
    x = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float64)
    return x, np.arange(n) % 3


def make_splits() -> dict:
    x, y = make_arrays()
    return {"train": (x, y), "test": (x[:5], y[:5])}


ARRAYS = make_arrays()


def all_ids(source: DataSource) -> np.ndarray:
    """The example ids (first feature) of every example in source, in order."""
    x, _ = source.batch(np.arange(len(source)))
    return x[:, 0].numpy().astype(np.int64)


# ---------------------------------------------------------------- sharder

@pytest.mark.parametrize(
    "n, w, b", [(1797, 3, 32), (10, 3, 4), (7, 7, 1), (100, 4, 10), (101, 4, 7), (5, 1, 100)]
)
def test_each_epoch_covers_every_example_exactly_once_across_workers(n, w, b):
    sharder = EpochSharder(n, w, b, seed=3)
    for epoch in range(3):
        shards = [sharder.shard(epoch, k) for k in range(w)]
        seen = np.concatenate(shards)
        assert np.array_equal(np.sort(seen), np.arange(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        batched = np.concatenate([np.concatenate(sharder.batches(epoch, k)) for k in range(w)])
        assert np.array_equal(np.sort(batched), np.arange(n))


@pytest.mark.parametrize("n, w, b", [(1797, 3, 32), (10, 3, 4), (7, 7, 1), (101, 4, 7), (100, 3, 2)])
def test_every_worker_gets_batches_per_epoch_batches_of_at_most_batch_size(n, w, b):
    sharder = EpochSharder(n, w, b)
    assert sharder.batches_per_epoch == -(-(-(-n // w)) // b)
    for k in range(w):
        batches = sharder.batches(0, k)
        assert len(batches) == sharder.batches_per_epoch
        assert all(1 <= len(batch) <= b for batch in batches)
        # near-equal: array_split, not full batches and a ragged tail
        assert max(map(len, batches)) - min(map(len, batches)) <= 1


def test_batches_per_epoch_for_digits_on_three_workers_is_nineteen():
    assert EpochSharder(1797, 3, 32).batches_per_epoch == 19


def test_tiny_data_with_batch_size_one_drops_empty_batches():
    sharder = EpochSharder(10, 3, 1)
    assert sharder.batches_per_epoch == 4
    counts = sorted(len(sharder.batches(0, k)) for k in range(3))
    assert counts == [3, 3, 4]
    assert all(len(batch) == 1 for k in range(3) for batch in sharder.batches(0, k))


def test_same_seed_and_epoch_give_the_same_shard_even_in_another_sharder():
    a, b = EpochSharder(500, 4, 16, seed=7), EpochSharder(500, 4, 16, seed=7)
    b.shard(5, 0)  # warm b's cache with another epoch first
    for k in range(4):
        assert np.array_equal(a.shard(2, k), b.shard(2, k))
    assert np.array_equal(a.shard(2, 1), pickle.loads(pickle.dumps(a)).shard(2, 1))


def test_order_differs_between_epochs_and_between_seeds():
    sharder = EpochSharder(500, 2, 16, seed=0)
    assert not np.array_equal(sharder.shard(0, 0), sharder.shard(1, 0))
    assert not np.array_equal(sharder.shard(0, 0), EpochSharder(500, 2, 16, seed=1).shard(0, 0))


def test_epoch_permutation_is_rng_of_seed_and_epoch_split_across_workers():
    perm = np.random.default_rng([4, 9]).permutation(11)
    sharder = EpochSharder(11, 3, 2, seed=4)
    assert np.array_equal(np.concatenate([sharder.shard(9, k) for k in range(3)]), perm)


@pytest.mark.parametrize(
    "args, named",
    [((5, 6, 1), "num_workers (6)"), ((5, 2, 0), "batch_size (0)"), ((5, 0, 1), "num_workers (0)")],
)
def test_sharder_rejects_bad_sizes_naming_the_number(args, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")) as e:
        EpochSharder(*args)
    if args == (5, 6, 1):
        assert "num_examples (5)" in str(e.value)


def test_shard_rejects_a_worker_index_out_of_range():
    with pytest.raises(ConfigError, match=r"worker \(3\)"):
        EpochSharder(10, 3, 2).shard(0, 3)


# ---------------------------------------------------------------- sources

def test_array_source_makes_float32_features_and_int64_labels():
    source = ArraySource(*ARRAYS)
    x, y = source.batch(np.array([4, 1]))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.tolist() == [[4.0, -4.0], [1.0, -1.0]]
    assert y.tolist() == [1, 1]


def test_array_source_keeps_float_targets_as_float32():
    _, y = ArraySource(np.zeros((3, 2)), np.full((3, 4), 0.25)).batch(np.arange(3))
    assert y.dtype == torch.float32 and y.shape == (3, 4)


def test_array_source_rejects_unequal_lengths_naming_both():
    with pytest.raises(ShapeError, match=r"x \(5 examples\) and y \(4 examples\)"):
        ArraySource(np.zeros((5, 2)), np.zeros(4))


def test_array_source_rejects_string_labels_naming_the_dtype():
    with pytest.raises(ShapeError, match="<U1"):
        ArraySource(np.zeros((2, 1)), np.array(["a", "b"]))


def test_torch_dataset_source_collates_pairs_and_makes_float64_float32():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.array([i, 2.0 * i]), 0.5 * i  # float64 array, Python float target

    x, y = TorchDatasetSource(Pairs()).batch(np.array([3, 0]))
    assert x.dtype == torch.float32 and x.tolist() == [[3.0, 6.0], [0.0, 0.0]]
    assert y.dtype == torch.float32 and y.tolist() == [1.5, 0.0]


def test_torch_dataset_source_rejects_items_that_are_not_pairs():
    ds = [torch.zeros(2)] * 3  # a list is map-style, but its items are not (x, y)
    with pytest.raises(ShapeError, match=r"item 1 \(Tensor\)"):
        TorchDatasetSource(ds).batch(np.array([1]))


def test_torch_dataset_source_rejects_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(ConfigError, match="Stream"):
        TorchDatasetSource(Stream())


# ---------------------------------------------------------------- resolve_data forms

def test_tuple_of_arrays_resolves_to_array_source_with_holdout():
    splits = resolve_data(ARRAYS)
    assert isinstance(splits, Splits) and isinstance(splits.train, ArraySource)
    assert (len(splits.train), len(splits.test)) == (16, 4)


def test_list_of_arrays_and_explicit_test_form_are_used_as_given():
    x, y = make_arrays(10)
    splits = resolve_data([x, y], test=(x[:3], y[:3]))
    assert all_ids(splits.train).tolist() == list(range(10))
    assert all_ids(splits.test).tolist() == [0, 1, 2]


def test_callable_is_called_and_its_return_value_resolved():
    splits = resolve_data(make_arrays, test_fraction=0)
    assert splits.test is None
    assert all_ids(splits.train).tolist() == list(range(20))


def test_module_callable_string_is_imported_and_called():
    splits = resolve_data("tests.test_data:make_splits")
    assert (len(splits.train), len(splits.test)) == (20, 5)


def test_module_string_may_name_data_itself():
    splits = resolve_data("tests.test_data:ARRAYS", test_fraction=0)
    assert len(splits.train) == 20


def test_torch_tensor_dataset_is_wrapped_and_batches_by_index():
    ds = TensorDataset(torch.arange(12.0).reshape(6, 2), torch.arange(6))
    splits = resolve_data(ds, test_fraction=0.5, seed=1)
    assert isinstance(splits.train, DataSource)
    x, y = splits.train.batch(np.arange(3))
    assert x.shape == (3, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = splits.train.batch(np.arange(3))[1].tolist() + splits.test.batch(np.arange(3))[1].tolist()
    assert sorted(labels) == list(range(6))


def test_train_test_dict_resolves_each_side():
    x, y = make_arrays()
    splits = resolve_data({"train": (x, y), "test": TensorDataset(torch.zeros(2, 2), torch.zeros(2))})
    assert (len(splits.train), len(splits.test)) == (20, 2)


def test_train_only_dict_gets_a_holdout():
    splits = resolve_data({"train": ARRAYS}, test_fraction=0.25)
    assert (len(splits.train), len(splits.test)) == (15, 5)


def test_npy_files_load_with_int64_labels(tmp_path):
    x, y = make_arrays()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.int32))
    splits = resolve_data({"x": str(tmp_path / "x.npy"), "y": tmp_path / "y.npy"}, test_fraction=0)
    xb, yb = splits.train.batch(np.array([7]))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert (xb.tolist(), yb.tolist()) == ([[7.0, -7.0]], [1])


def _write_parquet(path, label_name="label"):
    x, y = make_arrays()
    pq.write_table(pa.table({"a": x[:, 0].astype(np.int32), label_name: y, "b": x[:, 1]}), path)


def test_parquet_path_stacks_other_columns_as_float32_features(tmp_path):
    _write_parquet(tmp_path / "d.parquet")
    splits = resolve_data(str(tmp_path / "d.parquet"), test_fraction=0)
    xb, yb = splits.train.batch(np.array([5, 2]))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.tolist() == [[5.0, -5.0], [2.0, -2.0]] and yb.tolist() == [2, 2]


def test_parquet_dict_takes_a_named_label_column(tmp_path):
    _write_parquet(tmp_path / "d.parquet", label_name="digit")
    splits = resolve_data({"path": tmp_path / "d.parquet", "label": "digit"}, test_fraction=0)
    assert splits.train.batch(np.array([4]))[1].tolist() == [1]


def test_parquet_without_the_label_column_names_the_label_and_columns(tmp_path):
    _write_parquet(tmp_path / "d.parquet", label_name="digit")
    with pytest.raises(ConfigError, match=r"'label' not found \(columns: a, digit, b\)"):
        resolve_data(str(tmp_path / "d.parquet"))


def test_data_source_is_passed_through():
    source = ArraySource(*ARRAYS)
    assert resolve_data(source, test=source).train is source


# ---------------------------------------------------------------- holdout

def test_holdout_is_disjoint_covers_train_and_is_deterministic():
    x, y = make_arrays(50)
    a = resolve_data((x, y), test_fraction=0.2, seed=5)
    b = resolve_data((x, y), test_fraction=0.2, seed=5)
    train, test = all_ids(a.train), all_ids(a.test)
    assert len(test) == 10
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(50))
    assert np.array_equal(test, all_ids(b.test))
    assert not np.array_equal(test, all_ids(resolve_data((x, y), seed=6).test))


def test_holdout_of_a_torch_dataset_is_disjoint():
    ds = TensorDataset(torch.arange(30.0).reshape(30, 1), torch.arange(30))
    splits = resolve_data(ds, seed=2)
    train = splits.train.batch(np.arange(len(splits.train)))[1].tolist()
    test = splits.test.batch(np.arange(len(splits.test)))[1].tolist()
    assert len(test) == 6 and not set(train) & set(test) and sorted(train + test) == list(range(30))


def test_splits_pickle_and_keep_their_examples():
    splits = resolve_data(make_arrays(40), seed=3)
    copy = pickle.loads(pickle.dumps(splits))
    assert np.array_equal(all_ids(copy.test), all_ids(splits.test))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "spec, named",
    [
        ("foo.csv", "data ('foo.csv') must be"),
        (42, "data (42) must be"),
        ((1, 2, 3), "data ((1, 2, 3)) must be"),
        ({"features": "x.npy"}, "data: give either path (Parquet files) or x and y"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("tests.test_data:nope", "has no 'nope'"),
    ],
)
def test_unrecognised_forms_raise_config_error_naming_what_was_given(spec, named):
    with pytest.raises(ConfigError) as e:
        resolve_data(spec)
    assert named in str(e.value)


def test_missing_files_raise_config_error_naming_the_path(tmp_path):
    missing = str(tmp_path / "gone.parquet")
    with pytest.raises(ConfigError, match="gone.parquet.*no such file"):
        resolve_data(missing)
    with pytest.raises(ConfigError, match=r"x.npy.*no such file"):
        resolve_data({"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")})


def test_unknown_key_beside_a_known_form_is_named():
    with pytest.raises(ConfigError, match="unknown key 'lable'"):
        resolve_data({"path": "d.parquet", "lable": "y"})


def test_bad_test_form_is_named_as_test_data():
    with pytest.raises(ConfigError, match=r"test data \('test.csv'\) must be"):
        resolve_data(ARRAYS, test="test.csv")


def test_test_given_twice_is_rejected():
    with pytest.raises(ConfigError, match="given twice"):
        resolve_data(make_splits(), test=ARRAYS)


def test_test_fraction_outside_zero_to_one_is_rejected():
    with pytest.raises(ConfigError, match=r"test_fraction \(1.5\)"):
        resolve_data(ARRAYS, test_fraction=1.5)
