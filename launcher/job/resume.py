"""``psctl run --resume RUN_DIR``: the job a run directory describes, to continue from its checkpoints.

The driver writes ``config.json`` when a job starts, and checkpoints under
``RUN_DIR/checkpoints`` (or ``checkpoint.dir``) while it runs, so a job whose
driver was killed can be continued: ``run_job`` on the same directory starts
shards that restore the newest valid checkpoint by themselves, and the work
queue comes back to the same cut. Jobs built in Python from objects (a model
class rather than a ``module:callable`` name) cannot be rebuilt from JSON:
resume those through the Python API, passing the same ``Job`` and ``output``.

``config.json`` names the code the job runs; read back from disk, that code
runs only when it is rayps's bundled models or the user's own, unless the
user passes ``trust`` (runcode.py, worker/trust.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError
from .config import JobConfig, merge_overrides
from .runcode import check_run_code
from ...ps.core.checkpoint import CheckpointStore
from ...settings import build


def resumed_config(run_dir: str | Path, overrides: list[str] | None = None, trust: bool = False) -> JobConfig:
    """The job of ``run_dir``'s config.json with ``overrides``; ``trust``: run whatever code it names."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--resume {run_dir}: no config.json there; is it a run directory?") from None
    except ValueError as e:
        raise ConfigError(f"--resume {run_dir}: config.json is not valid JSON: {e}") from None
    for key in ("model", "data", "loss", "test_data"):
        value = raw.get(key)
        if isinstance(value, str) and value.startswith("<"):  # the repr of an object the API was given
            raise ConfigError(f"--resume {run_dir}: the job's {key} was a Python object ({value[:60]}), which"
                              " cannot be rebuilt from config.json; resume it with Job(...).run(output=...)")
    debug = raw.get("debug") or {}
    for key in ("slow_workers", "slowdown"):  # JSON made their worker ids strings
        if isinstance(debug.get(key), dict):
            debug[key] = {int(w) if str(w).isdigit() else w: v for w, v in debug[key].items()}
    used = merge_overrides(JobConfig, raw, overrides) if overrides else raw
    check_run_code(run_dir, raw, used, trust)  # before anything it names is imported
    config = build(JobConfig, used, str(path))
    root = Path(config.checkpoint.dir or run_dir / "checkpoints")
    if not config.checkpoint.enabled or not CheckpointStore(root).steps():
        raise ConfigError(f"--resume {run_dir}: no checkpoint under {root} to continue from")
    return config
