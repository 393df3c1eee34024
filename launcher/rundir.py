"""The run directory: what a finished job leaves on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

from launcher.config import JobConfig


def default_run_dir(config: JobConfig) -> Path:
    """runs/<time>-<mode>, with a counter when two jobs start in the same second."""
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.consistency.mode}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def write_run_dir(run_dir: Path, config: JobConfig, summary: dict) -> Path:
    """Write summary.json and config.json; a temp name then a rename, so no reader sees half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, payload in (("summary.json", summary), ("config.json", config.to_dict())):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        tmp.replace(run_dir / name)
    return run_dir.resolve()
