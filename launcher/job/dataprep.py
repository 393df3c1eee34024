"""A job's chunked data on Ray: the statistics passes as Ray tasks, the saved state, the run-dir files.

The passes are tasks (one per worker the job will have, each reading a group
of chunks), not a Ray Data pipeline: what they compute is our own mergeable
summary, the second pass depends on what the first found, and tasks reuse
Ray's pooled worker processes instead of starting an executor beside the
job's own actors on a small machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray
import ray.exceptions

from ...errors import PSError
from ..data.report import summary_part, write_quality
from ...ps.core.checkpoint import CheckpointStore
from ...worker.data.pipeline import PreparedData, prepare, summarize_group

DATA_STATE = "data.json"  # in the run directory: the fitted transform and the rows each chunk keeps
TRANSFORM = "transform.json"  # the fitted transform alone: what an exported model applies to raw rows


def ray_map(num_cpus: float = 0, resources: dict | None = None):
    """Run each pass's groups as Ray tasks, in parallel."""
    task = ray.remote(summarize_group).options(num_cpus=num_cpus, resources=dict(resources or {}))

    def run(calls: list[tuple]) -> list:
        try:
            return ray.get([task.remote(*args) for args in calls])
        except ray.exceptions.RayTaskError as e:
            # A bad file is the user's error, named by file, row group and column: say that, not a traceback.
            if isinstance(e.cause, PSError):
                raise e.cause from None
            raise

    return run


def saved_state(checkpoint_root: str | None, run_dir: Path | None) -> dict | None:
    """A resumed job's data state: from the newest valid checkpoint (what the shards restore), else the
    run directory's data.json; None for a new job."""
    if checkpoint_root is not None and Path(checkpoint_root).is_dir():
        latest = CheckpointStore(checkpoint_root).latest(only=["data"])
        if latest is not None and "data" in latest[1]:
            return latest[1]["data"]
    if run_dir is not None and (run_dir / DATA_STATE).is_file() and (run_dir / "checkpoints").is_dir():
        return json.loads((run_dir / DATA_STATE).read_text())
    return None


def prepare_on_ray(config, checkpoint_root: str | None, run_dir: Path | None) -> PreparedData:
    """The job's prepared data: fitted by parallel passes, or rebuilt from a resumed run's state."""
    return prepare(config.data, config.seed, parallel=config.workers,
                   map_groups=ray_map(config.worker_cpus, config.worker_resources),
                   saved=saved_state(checkpoint_root, run_dir))


def write_data_files(run_dir: Path, prepared: PreparedData) -> dict:
    """quality.json, quality.png, transform.json and data.json; the summary's data part."""
    (run_dir / DATA_STATE).write_text(json.dumps(prepared.state()) + "\n")
    (run_dir / TRANSFORM).write_text(json.dumps(prepared.transform.to_dict(), indent=1) + "\n")
    if prepared.first is not None:
        return summary_part(write_quality(run_dir, prepared))
    if (run_dir / "quality.json").is_file():  # resumed: the report of the run's own passes
        return summary_part(json.loads((run_dir / "quality.json").read_text()))
    return {}


def load_transform(run_dir: str | Path):
    """The fitted transform a run applied to its data (``DataTransform.apply`` on raw rows)."""
    from ...worker.data.transform import DataTransform
    return DataTransform.from_dict(json.loads((Path(run_dir) / TRANSFORM).read_text()))
