"""psctl's cluster commands: up, down, submit, status, logs, stop, scale (parsers in cli.py).

Each takes the parsed arguments and returns the exit code; errors are
raised as PSError (ConfigError, ClusterError) for cli.main to print.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ...errors import ConfigError
from .auth import ensure_token
from .provision import ClusterFile, down, load_cluster_file, up, write_up_config
from ..job.config import load_job_config
from .jobs import Jobs, entrypoint, project_dir, resolve_address


def cmd_up(args: argparse.Namespace) -> int:
    cluster = load_cluster_file(args.config)  # both halves checked before Ray is asked for anything
    token = ensure_token()
    if token.created:
        print(f"generated a Ray auth token in {token.source} (mode 0600); psctl submit sends it")
    if args.dry_run:
        path = write_up_config(cluster, token)
        print(f"# {path}  (`ray up -y {path}` would run)")
        print(path.read_text(), end="")
        return 0
    path = up(cluster, token, wait_s=args.wait)
    address = resolve_address(None, cluster)
    print(f"cluster {cluster.name!r} is up (Ray config: {path}); dashboard: {address}")
    print(f"run the job: psctl submit {args.config}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = load_cluster_file(args.config)
    down(cluster)
    print(f"cluster {cluster.name!r} is down")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cluster = _cluster(args.config, args.overrides)
    address = resolve_address(args.address, cluster)
    working_dir = Path(args.working_dir).resolve() if args.working_dir else project_dir()
    command = entrypoint(args.config, working_dir, args.overrides, args.output)
    jobs = Jobs(address)
    job_id = jobs.submit(command, working_dir, metadata={"submitted_by": "psctl"})
    print(f"submitted {job_id} to {address}: {command}", flush=True)
    if args.no_wait:
        return 0
    return _follow(jobs, job_id)


def cmd_status(args: argparse.Namespace) -> int:
    jobs = Jobs(resolve_address(args.address, _cluster(args.config)))
    listed = sorted(jobs.list(), key=lambda j: j.start_time or 0)
    if not listed:
        print(f"no jobs on {jobs.address}")
        return 0
    print(f"{'JOB':<30} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
    for job in listed:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        command = job.entrypoint if len(job.entrypoint) <= 70 else job.entrypoint[:67] + "..."
        print(f"{job.submission_id or job.job_id:<30} {job.status:<10} {started:<19} {command}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    jobs = Jobs(resolve_address(args.address, _cluster(args.config)))
    if args.follow:
        return _follow(jobs, args.job)
    print(jobs.logs(args.job), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    jobs = Jobs(resolve_address(args.address, _cluster(args.config)))
    if not jobs.stop(args.job):
        print(f"{args.job} was not running ({jobs.status(args.job)})")
        return 0
    deadline = time.monotonic() + 30  # Ray signals, then kills the driver after its own timeout
    while (status := jobs.status(args.job)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"{args.job}: {status}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    """Reach the running job's work queue from inside the cluster: a one-line Ray job does it."""
    if args.workers is None and args.servers is None:
        raise ConfigError("psctl scale: give --workers N, --servers N or both")
    for what, value in (("workers", args.workers), ("servers", args.servers)):
        if value is not None and value < 1:
            raise ConfigError(f"--{what} ({value}) must be >= 1")
    jobs = Jobs(resolve_address(args.address, _cluster(args.config)))
    status = jobs.status(args.job)
    if status != "RUNNING":
        raise ConfigError(f"job {args.job} is {status}, not RUNNING: only a running job can be scaled")
    asks = [*(["--workers", str(args.workers)] if args.workers is not None else []),
            *(["--servers", str(args.servers)] if args.servers is not None else [])]
    command = shlex.join(["python", "-m", "rayps", "scale-here", args.job, *asks])
    helper = jobs.submit(command, project_dir(), metadata={"submitted_by": "psctl scale"})
    deadline = time.monotonic() + 120
    while (done := jobs.status(helper)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
    if done != "SUCCEEDED":
        print(f"psctl: scaling {args.job} failed ({done}): {jobs.logs(helper).strip()}", file=sys.stderr)
        return 1
    said = " and ".join(f"{v} {w}" for w, v in (("workers", args.workers), ("servers", args.servers)) if v is not None)
    print(f"{args.job}: asked for {said}")
    return 0


def cmd_scale_here(args: argparse.Namespace) -> int:
    import ray

    from ..job.driver import scale_job

    ray.init(address="auto", logging_level="ERROR")
    scale_job(args.job, args.workers, args.servers)
    return 0


def cmd_wait_nodes(args: argparse.Namespace) -> int:
    from .nodes import wait_here

    return wait_here(args.ips, args.timeout)


COMMANDS = {"up": cmd_up, "down": cmd_down, "submit": cmd_submit, "status": cmd_status,
            "logs": cmd_logs, "stop": cmd_stop, "scale": cmd_scale, "scale-here": cmd_scale_here,
            "wait-nodes": cmd_wait_nodes}


def _cluster(config: str | None, overrides: list[str] | None = None) -> ClusterFile | None:
    if config is None:
        load_job_config(None, overrides)  # a bad --set fails here, not on the cluster
        return None
    return load_cluster_file(config, overrides)


def _follow(jobs: Jobs, job_id: str) -> int:
    try:
        status = jobs.follow(job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(f"\nno longer following {job_id}; it keeps running (psctl stop {job_id} --address {jobs.address})",
              file=sys.stderr)
        return 130
    if status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    message = getattr(jobs.info(job_id), "message", None) or ""
    print(f"psctl: job {job_id} {status}{': ' + message if message else ''}", file=sys.stderr)
    return 1
