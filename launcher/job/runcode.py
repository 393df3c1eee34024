"""The code a run directory's ``config.json`` names, checked before a resumed or exported job runs it.

A job's config names code by ``module:callable`` in a few keys (``model``,
``loss``, ``forward``, ``compute_loss``, ``train_loop_per_worker``, and
``data`` / ``test_data`` in their called forms). Read back from a run
directory, each must pass worker/trust.py's rule unless the user trusts the
directory (``--trust``, ``trust=True``). A name the user gave (``--set``) is
the user's own, and is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...worker.data.config import is_pipeline_spec
from ...worker.trust import check_trusted

_CALLABLES = ("model", "loss", "forward", "compute_loss", "train_loop_per_worker")


def code_names(raw: Mapping[str, Any]) -> dict[str, str]:
    """Every ``module:callable`` in a job's config as JSON holds it, by key (``data.train``)."""
    names = {key: raw[key] for key in _CALLABLES if isinstance(raw.get(key), str) and ":" in raw[key]}
    for key in ("data", "test_data"):
        names.update(_data_names(raw.get(key), key))
    return names


def check_run_code(run_dir: str | Path, from_file: Mapping[str, Any], used: Mapping[str, Any] | None = None,
                   trust: bool = False) -> None:
    """Refuse (UntrustedCodeError) code that ``run_dir``'s config.json names and the job will run.

    ``from_file``: the config as read; ``used``: what the job runs after the user's overrides (the file's
    own when None), whose names the user changed are the user's own and pass.
    """
    if trust:
        return
    named = code_names(from_file)
    for key, spec in code_names(from_file if used is None else used).items():
        if named.get(key) == spec:
            check_trusted(spec, run_dir, f"config.json: {key}")


def _data_names(value: Any, key: str) -> dict[str, str]:
    # What worker/data/sources.py imports: a 'module:callable' string that is not a path, or one inside
    # {train, test}; the other forms (arrays, .npy and Parquet paths) are data, read, never run.
    if isinstance(value, str):
        return {key: value} if ":" in value and not is_pipeline_spec(value) else {}
    if isinstance(value, Mapping) and "train" in value:
        return {**_data_names(value.get("train"), f"{key}.train"), **_data_names(value.get("test"), f"{key}.test")}
    return {}
