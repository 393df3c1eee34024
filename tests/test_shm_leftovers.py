"""What a killed driver's job leaves in shared memory is removed by the next run, and nothing else is."""

from __future__ import annotations

import json
import os
import socket

from rayps.launcher.job.shm_leftovers import RECORD, remove_left_shm


def note(run_dir, root, host=None, tag="abc123", directories=("rayps-shard0-x1", "rayps-shard1-y2")):
    (run_dir / RECORD).write_text(json.dumps({"host": host or socket.gethostname(), "root": str(root),
                                              "directories": list(directories), "tag": tag}))


def test_the_noted_directories_and_the_jobs_tagged_files_go_and_nothing_else(tmp_path):
    root, run_dir = tmp_path / "shm", tmp_path / "run"
    root.mkdir()
    run_dir.mkdir()
    for name in ("rayps-shard0-x1", "rayps-shard1-y2", "rayps-abc123-worker0", "rayps-shard2-other",
                 "rayps-zzz999-worker0", "mine"):
        (root / name).mkdir()
    (root / "rayps-abc123-params").write_bytes(b"\0" * 64)
    note(run_dir, root)
    removed = remove_left_shm(run_dir)
    assert sorted(os.path.basename(p) for p in removed) == [
        "rayps-abc123-params", "rayps-abc123-worker0", "rayps-shard0-x1", "rayps-shard1-y2"]
    assert sorted(os.listdir(root)) == ["mine", "rayps-shard2-other", "rayps-zzz999-worker0"]  # others' untouched
    assert not (run_dir / RECORD).exists()


def test_a_note_from_another_machine_or_naming_paths_elsewhere_removes_nothing(tmp_path):
    root, run_dir = tmp_path / "shm", tmp_path / "run"
    root.mkdir()
    run_dir.mkdir()
    (root / "rayps-shard0-x1").mkdir()
    note(run_dir, root, host="some-other-host")
    assert remove_left_shm(run_dir) == [] and (root / "rayps-shard0-x1").exists()
    note(run_dir, root, directories=("../run", "rayps-shard0-x1/../../run", "/etc"))
    assert remove_left_shm(run_dir) == []
    assert run_dir.exists() and (root / "rayps-shard0-x1").exists()
    (run_dir / RECORD).write_text("not json")
    assert remove_left_shm(run_dir) == []
