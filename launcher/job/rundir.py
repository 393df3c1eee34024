"""The run directory: what a finished job leaves on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import JobConfig


def default_run_dir(config: JobConfig) -> Path:
    """runs/<time>-<mode>, with a counter when two jobs start in the same second."""
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.consistency.mode}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def write_run_dir(run_dir: Path, config: JobConfig, summary: dict, history: list[dict] = ()) -> Path:
    """Write summary.json, config.json and history.jsonl.

    Each file goes to a temp name first and is then renamed, so no reader sees half a file.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "summary.json": json.dumps(summary, indent=2, sort_keys=True) + "\n",
        "config.json": json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n",
        "history.jsonl": "".join(json.dumps(row, sort_keys=True) + "\n" for row in history),
    }
    for name, text in files.items():
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(run_dir / name)
    return run_dir.resolve()
