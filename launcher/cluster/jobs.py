"""Jobs on a running Ray cluster, through the Ray Jobs API (the dashboard's HTTP port).

``psctl submit`` uploads the project directory as the job's working_dir
(without runs/, .git and caches) and runs ``python -m rayps run
cluster.yaml [--set ...]`` there: the same command as a local run, joining
the cluster through the ``RAY_ADDRESS`` that Ray gives a job's driver. The
package psctl runs from travels as the job's ``rayps`` module (Ray's
py_modules), so the driver and every actor of the job run the code that
submitted it, not the copy each node installed at ``psctl up``.

``Jobs`` wraps ``ray.job_submission.JobSubmissionClient``: it sends the
auth token (``launcher.auth``) as ``Authorization: Bearer ...`` and turns
the SDK's failures into ``ClusterError`` messages that name the address.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from .auth import Token, find_token
from .provision import ClusterFile
from ...errors import ClusterError
from ..job.config import read_job_section

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Gitignore-style, relative to the working_dir: what never needs to travel to the cluster.
EXCLUDES = ["/runs/", ".git", "__pycache__", "*.egg-info", ".pytest_cache"]


def resolve_address(address: str | None, cluster: ClusterFile | None = None) -> str:
    """--address, else the local-provider head of cluster.yaml, else $RAY_ADDRESS, else 127.0.0.1:8265."""
    if address:
        return address
    from_file = cluster.dashboard_address() if cluster is not None else None
    return from_file or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def project_dir() -> Path:
    """The source checkout this launcher runs from: what a job's working_dir uploads."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "launcher").is_dir()):
        raise ClusterError(f"{root} is not the project's source checkout; pass --working-dir")
    return root


def entrypoint(config: str | Path | None, working_dir: Path, overrides: Iterable[str] = (),
               output: str | None = None) -> str:
    """The job's shell command: ``python -m rayps run <config> [--set ...] [--output DIR]``.

    A config inside ``working_dir`` travels with it and is named by its
    relative path; one outside it is sent as ``--set`` of each top-level
    job key (its Ray part is not needed on the cluster).
    """
    args = ["python", "-m", "rayps", "run"]
    if config is not None:
        path = Path(config).resolve()
        if path.is_relative_to(working_dir.resolve()):
            args.append(path.relative_to(working_dir.resolve()).as_posix())
        else:
            for key, value in read_job_section(path).items():
                args += ["--set", f"{key}={json.dumps(value, default=str)}"]
    for text in overrides:
        args += ["--set", text]
    if output:
        args += ["--output", output]
    return shlex.join(args)


#: The package this launcher runs from (a checkout's root, or site-packages/rayps): its modules and four folders.
PACKAGE = Path(__file__).resolve().parents[2]
PACKAGE_PARTS = ("ps", "worker", "protos", "launcher")


def package_copy(package: Path, into: Path) -> Path:
    """The package at ``package`` copied into ``into/rayps`` (a folder named as the module it is, which
    is what Ray's py_modules ships); that folder."""
    target = into / "rayps"
    target.mkdir()
    for module in package.glob("*.py"):
        shutil.copy(module, target / module.name)
    for part in PACKAGE_PARTS:
        shutil.copytree(package / part, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


#: Where a submitted job's driver learns the name ``psctl scale`` finds it by (launcher/job/driver.py: job_name).
JOB_NAME_ENV = "RAYPS_JOB_NAME"


class Jobs:
    """The Jobs API of the cluster whose dashboard is at ``address``."""

    def __init__(self, address: str, token: Token | None = None, agent_wait_s: float = 60.0):
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.agent_wait_s = agent_wait_s
        self._token = token if token is not None else find_token()
        headers = self._token.header() if self._token is not None else None
        self._client = self._call(lambda: JobSubmissionClient(address, headers=headers))

    def submit(self, command: str, working_dir: Path, metadata: dict | None = None) -> str:
        """Upload ``working_dir`` and start ``command``; return the submission id.

        The id is chosen here and also handed to the job as ``RAYPS_JOB_NAME`` (Ray tells a submitted
        driver nothing of its own id), so a running job is found under it (``psctl scale``)."""
        import secrets

        submission_id = f"raysubmit_{secrets.token_hex(8)}"
        with tempfile.TemporaryDirectory(prefix="rayps-submit-") as staging:
            runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES,
                           "py_modules": [str(package_copy(PACKAGE, Path(staging)))],
                           "env_vars": {JOB_NAME_ENV: submission_id}}
            deadline = time.monotonic() + self.agent_wait_s
            while True:
                try:
                    return self._call(lambda: self._client.submit_job(
                        entrypoint=command, runtime_env=runtime_env, metadata=metadata or {},
                        submission_id=submission_id))
                except ClusterError as e:
                    # A cluster that has just started answers this until its head's job agent is up.
                    if "No available agent" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)

    def follow(self, job_id: str, echo: Callable[[str], None], poll_s: float = 0.5) -> str:
        """Stream the job's logs to ``echo`` until it ends; return its final status."""
        async def tail():
            async for chunk in self._client.tail_job_logs(job_id):
                echo(chunk)

        try:
            asyncio.run(tail())
        except Exception as e:  # the log stream dropped (aiohttp, websocket): the status still tells the end
            echo(f"(log stream from {self.address} ended early: {e})\n")
        while (status := self.status(job_id)) not in TERMINAL:
            time.sleep(poll_s)
        return status

    def status(self, job_id: str) -> str:
        return str(self._call(lambda: self._client.get_job_status(job_id)))

    def info(self, job_id: str):
        return self._call(lambda: self._client.get_job_info(job_id))

    def list(self) -> list:
        return self._call(self._client.list_jobs)

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self._client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; True if it was running."""
        return self._call(lambda: self._client.stop_job(job_id))

    def _call(self, fn):
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except AuthenticationError:
            raise ClusterError(self._auth_message()) from None
        except OSError as e:  # requests' connection errors are OSErrors, not ConnectionErrors
            raise ClusterError(
                f"cannot reach the Ray dashboard at {self.address} ({str(e).rstrip('.')}). Is the cluster up?"
                " A dashboard on 127.0.0.1 of a remote head needs a tunnel first:"
                " `ray dashboard ~/.rayps/clusters/<name>/ray-up.yaml`, then --address http://127.0.0.1:8265") from None
        except RuntimeError as e:
            raise ClusterError(f"{self.address}: {e}") from None

    def _auth_message(self) -> str:
        if self._token is None:
            return (f"{self.address} requires a Ray auth token and none was found"
                    " ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
        return f"{self.address} rejected the Ray auth token from {self._token.source}"
