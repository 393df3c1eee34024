"""CheckpointStore on real files: round trips, corruption detected and skipped, crashes never chosen."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import numpy as np
import pytest

from rayps.errors import ConfigError
from rayps.ps.core.checkpoint import CheckpointStore, CorruptCheckpoint
from tests.test_shard_state import drive, make


def shard_state(pushes=((0, 1), (1, 1), (0, 2))):
    shard = make("bsp")
    drive(shard, list(pushes))
    return shard.state_dict()


def test_a_shard_state_round_trips_through_disk_and_the_restored_shard_resumes_exactly(tmp_path):
    store = CheckpointStore(tmp_path)
    original = make("bsp")
    drive(original, [(0, 1), (1, 1), (0, 2)])
    store.write(7, {"shard-0": original.state_dict(), "job": {"epoch": 1, "seen": {0: 12, 1: 10}}})
    step, parts = store.latest()
    assert step == 7 and parts["job"] == {"epoch": 1, "seen": {0: 12, 1: 10}}  # int keys stay ints
    restored = make("bsp")
    restored.load_state_dict(parts["shard-0"])
    for worker in (0, 1):  # each worker registers again after a restore (register() would wait on the round)
        restored.enter(worker, 0)
    drive(original, [(1, 2), (0, 3), (1, 3)])
    drive(restored, [(1, 2), (0, 3), (1, 3)])
    a, b = asyncio.run(original.pull()), asyncio.run(restored.pull())
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1] and a[2].tobytes() == b[2].tobytes()


def write_three(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    for step in (10, 20, 30):
        store.write(step, {"shard-0": shard_state(), "job": {"step": step}})
    return store


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: flip_a_byte(d / "shard-0.safetensors"), "shard-0.safetensors does not match its sha256"),
    (lambda d: (d / "shard-0.safetensors").write_bytes((d / "shard-0.safetensors").read_bytes()[:-9]),
     "shard-0.safetensors has"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is missing or unreadable"),
    (lambda d: os.remove(d / "shard-0.json"), "shard-0.json is missing"),
    (lambda d: zero_tensor_bytes(d / "shard-0.safetensors"), "does not match its sha256"),
], ids=["flipped_byte", "truncated", "bad_manifest", "missing_file", "zeroed_tensors"])
def test_a_damaged_newest_checkpoint_is_skipped_with_an_error_and_the_previous_one_loads(
        tmp_path, caplog, damage, fragment):
    store = write_three(tmp_path)
    damage(store.path(30))
    with caplog.at_level(logging.ERROR, logger="rayps.ps.core.checkpoint"):
        step, parts = store.latest()
    assert step == 20 and parts["job"] == {"step": 20}
    assert fragment in caplog.text and "ckpt-000000000030" in caplog.text
    with pytest.raises(CorruptCheckpoint, match="ckpt-000000000030"):
        store.read(30)


def zero_tensor_bytes(path):
    """Zero the tensor payload but keep the safetensors header: the file still parses."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(len(data) - header)
    path.write_bytes(bytes(data))


def test_a_write_cut_off_part_way_is_never_chosen(tmp_path, monkeypatch):
    store = write_three(tmp_path)
    import rayps.ps.core.checkpoint as checkpoint

    calls = {"n": 0}
    real = checkpoint._write_synced

    def dies_on_the_third_file(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("the process dies here")  # as if killed mid-write
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_synced", dies_on_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        store.write(40, {"shard-0": shard_state(), "job": {"step": 40}})
    assert store.steps() == [10, 20, 30]
    assert store.latest()[0] == 30


def test_a_leftover_temporary_directory_from_a_killed_writer_is_ignored(tmp_path):
    store = write_three(tmp_path)
    partial = tmp_path / ".tmp-ckpt-000000000040-1234-5"
    partial.mkdir()
    (partial / "shard-0.safetensors").write_bytes(b"half")
    assert store.steps() == [10, 20, 30] and store.latest()[0] == 30


def test_only_the_newest_k_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        store.write(step, {"job": {"step": step}})
    assert store.steps() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000003", "ckpt-000000000004"]


def test_the_manifest_lists_every_file_with_its_sha256(tmp_path):
    store = CheckpointStore(tmp_path)
    where = store.write(5, {"shard-0": shard_state(), "job": {}})
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["step"] == 5 and manifest["parts"] == ["job", "shard-0"]
    assert sorted(manifest["files"]) == ["job.json", "job.safetensors", "shard-0.json", "shard-0.safetensors"]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_no_checkpoint_and_bad_arguments(tmp_path):
    assert CheckpointStore(tmp_path / "none").latest() is None
    with pytest.raises(ConfigError, match=r"keep \(0\) must be >= 1"):
        CheckpointStore(tmp_path, keep=0)
    with pytest.raises(ConfigError, match="part name 'manifest'"):
        CheckpointStore(tmp_path).write(1, {"manifest": {}})
    with pytest.raises(ConfigError, match="is a set"):
        CheckpointStore(tmp_path).write(1, {"job": {"x": {1, 2}}})
    arrays = CheckpointStore(tmp_path / "arrays")
    arrays.write(2, {"job": {"a": np.arange(3), "b": [np.ones(2, np.float32), 3]}})
    job = arrays.latest()[1]["job"]
    np.testing.assert_array_equal(job["a"], [0, 1, 2])
    assert job["b"][0].dtype == np.float32 and job["b"][1] == 3
