"""The Ray half of cluster.yaml, and the clusters psctl starts with it.

cluster.yaml is a Ray cluster-launcher config plus a ``job:`` section.
``load_cluster_file`` checks both halves before anything starts: the Ray
part against Ray's own JSON schema (``ray/autoscaler/ray-schema.json``),
the job part against ``JobConfig``; every error names the file and the
dotted key (``cluster.yaml: provider.type: expected a string, got 3``).

``ray_up_config`` is what ``ray up`` reads: ``job:`` stripped, and on every
node ``RAY_AUTH_MODE=token`` with the token mounted from this machine, and
the dashboard bound to 127.0.0.1 unless the file binds it elsewhere. ``up``
and ``down`` write it under ``~/.rayps/clusters/<name>/`` and run
``ray up -y`` / ``ray down -y`` on it. For a local provider that lists its
machines, ``up`` first checks every one answers over SSH and afterwards
waits until each has joined (launcher/cluster/nodes.py), and ``down`` also
stops Ray on the workers, which ``ray down`` leaves running.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from .auth import AUTH_MODE_ENV, TOKEN_PATH_ENV, Token
from .nodes import await_nodes, node_hosts
from ..job.config import JobConfig, load_job_config, read_yaml_mapping
from .ssh import Ssh, why
from ...errors import ClusterError, ConfigError

DEFAULT_DASHBOARD_PORT = 8265
DASHBOARD_HOST = "127.0.0.1"
MAX_ERRORS = 10
DEFAULT_WAIT_S = 300  # for every machine to join after `ray up`: file mounts, setup commands, `ray start`
STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class ClusterFile:
    """A checked cluster.yaml: Ray's part (``job:`` stripped) and the job."""

    path: Path
    ray: Mapping[str, Any]  # Ray's cluster-launcher config, as Ray reads it; do not mutate
    job: JobConfig

    @property
    def name(self) -> str:
        return self.ray["cluster_name"]

    def dashboard_address(self) -> str | None:
        """``http://<head_ip>:<port>`` for a local-provider cluster; None for a cloud one."""
        provider = self.ray["provider"]
        if provider.get("type") != "local" or not provider.get("head_ip"):
            return None
        port = DEFAULT_DASHBOARD_PORT
        for command in start_commands(self.ray, "head_start_ray_commands"):
            found = re.search(r"--dashboard-port[= ](\d+)", command)
            port = int(found.group(1)) if found else port
        return f"http://{provider['head_ip']}:{port}"


def load_cluster_file(path: str | Path, overrides: list[str] | None = None) -> ClusterFile:
    """Read and check a cluster.yaml; raise ConfigError naming the file and key."""
    path = Path(path)
    doc = read_yaml_mapping(path)
    ray_part = {k: v for k, v in doc.items() if k != "job"}
    check_ray_config(ray_part, str(path))
    return ClusterFile(path=path, ray=ray_part, job=load_job_config(path, overrides))


# --- Ray's schema ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def ray_schema() -> dict:
    """Ray's cluster-launcher JSON schema, from the installed ray package (not imported)."""
    return json.loads((_ray_package() / "autoscaler" / "ray-schema.json").read_text())


def _ray_package() -> Path:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("the ray package is not installed: pip install 'ray[default]'")
    return Path(list(spec.submodule_search_locations)[0])


def check_ray_config(config: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError listing what Ray's schema (and Ray's own extra checks) reject."""
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    problems: list[str] = []
    for error in sorted(validator.iter_errors(dict(config)), key=lambda e: [str(p) for p in e.absolute_path]):
        key = _dotted(error.absolute_path)
        prefix = f"{where}: {key}: " if key else f"{where}: "
        problems += [prefix + message for message in _describe(error)]
    if not problems:
        problems = [f"{where}: {message}" for message in _semantic_problems(config)]
    if problems:
        more = len(problems) - MAX_ERRORS
        shown = problems[:MAX_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
        raise ConfigError("\n".join(shown))


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def _describe(error) -> list[str]:
    """jsonschema's error as 'what is wrong', without its dump of the whole instance."""
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and isinstance(instance, Mapping):
        allowed = sorted(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = [k for k in instance if k not in allowed and not any(re.search(p, str(k)) for p in patterns)]
        return [f"unknown key {k!r}{_hint(str(k), allowed)}" for k in unknown]
    if kind == "required" and isinstance(instance, Mapping):
        return [f"missing required key {k!r}" for k in value if k not in instance]
    if kind == "type":
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in ([value] if isinstance(value, str) else value))
        return [f"expected {wanted}, got {instance!r}"]
    if kind == "enum":
        return [f"{instance!r} is not one of {', '.join(map(repr, value))}"]
    return [error.message]


def _hint(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(allowed)})" if allowed else ""


def _semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """What `ray up` would abort on after the schema passed (ray.autoscaler's validate_config, prepare_local)."""
    name = str(config["cluster_name"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        return [f"cluster_name: {name!r} must be letters, digits, '.', '_' or '-' (psctl names a folder after it)"]
    provider = config["provider"]
    if provider.get("type") == "local":
        for key in ("head_node", "worker_nodes", "available_node_types"):
            if config.get(key):
                return [f"{key}: not supported by the local provider (list machines in provider.worker_ips)"]
        if "coordinator_address" not in provider:
            missing = [k for k in ("head_ip", "worker_ips") if k not in provider]
            if missing:
                return [f"provider: missing required key {missing[0]!r} (the local provider needs head_ip"
                        " and worker_ips, or a coordinator_address)"]
    types = config.get("available_node_types")
    if types:
        head = config.get("head_node_type")
        if head is None:
            return ["missing required key 'head_node_type' (needed with available_node_types)"]
        if head not in types:
            return [f"head_node_type: {head!r} is not one of available_node_types ({', '.join(types)})"]
    return []


# --- the config `ray up` reads ---------------------------------------------------------------


def start_commands(config: Mapping[str, Any], key: str) -> list[str]:
    """The file's start commands, or the provider's defaults that Ray would use in their place."""
    if config.get(key) is not None:
        return list(config[key])
    defaults = _ray_package() / "autoscaler" / str(config["provider"].get("type")) / "defaults.yaml"
    if defaults.is_file():
        commands = (yaml.safe_load(defaults.read_text()) or {}).get(key)
        if commands:
            return list(commands)
    head = key.startswith("head")
    return ["ray stop", "ray start --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml"
            if head else "ray start --address=$RAY_HEAD_IP:6379"]


def remote_token_path(cluster_name: str) -> str:
    """Where the token lands on each node (not ~/.ray/auth_token, which other Ray users there may own)."""
    return f"~/.rayps/{cluster_name}/auth_token"


def auth_env(cluster_name: str) -> str:
    """A shell prefix that turns token auth on with the token psctl mounted on the node.

    Each of Ray's commands runs in its own shell, so each one gets it.
    """
    remote = remote_token_path(cluster_name)
    return (f"export {AUTH_MODE_ENV}=token {TOKEN_PATH_ENV}=\"$HOME\"/"
            f"{shlex.quote(remote.removeprefix('~/'))} && ")


def ray_up_config(config: Mapping[str, Any], token_file: str | Path, base_dir: str | Path | None = None) -> dict:
    """Ray's config with token auth on every node and the dashboard on 127.0.0.1 by default.

    ``token_file`` is the local file mounted to every node; the config holds
    its path, never the token. Relative local paths of ``file_mounts`` are
    made absolute against ``base_dir`` (cluster.yaml's folder), since the
    written config lives elsewhere.
    """
    out = copy.deepcopy(dict(config))
    remote = remote_token_path(out["cluster_name"])
    mounts = {dst: _anchor(src, base_dir) for dst, src in (out.get("file_mounts") or {}).items()}
    out["file_mounts"] = {**mounts, remote: str(token_file)}
    env = auth_env(out["cluster_name"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = start_commands(out, key)
        if key.startswith("head"):
            commands = [_bind_dashboard(c) for c in commands]
        out[key] = [env + c for c in commands]
    return out


def _anchor(local: str, base_dir: str | Path | None) -> str:
    if base_dir is None or local.startswith("~") or Path(local).is_absolute():
        return local
    return str((Path(base_dir) / local).resolve())


def _bind_dashboard(command: str) -> str:
    if "--dashboard-host" in command or not re.search(r"\bray start\b", command):
        return command
    return re.sub(r"\bray start\b", f"ray start --dashboard-host={DASHBOARD_HOST}", command, count=1)


def state_dir(cluster_name: str, root: str | Path | None = None) -> Path:
    """Where psctl keeps the files it hands to `ray up` for one cluster (mode 0700)."""
    base = Path(root) if root is not None else Path.home() / ".rayps" / "clusters"
    path = base / cluster_name
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_up_config(cluster: ClusterFile, token: Token, root: str | Path | None = None) -> Path:
    """Write the token copy and the config for `ray up`; return the config's path."""
    directory = state_dir(cluster.name, root)
    token_file = directory / "auth_token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token.value)
    config = ray_up_config(cluster.ray, token_file, cluster.path.parent.resolve())
    path = directory / "ray-up.yaml"
    header = f"# Written by psctl from {cluster.path.resolve()}; edit that file, not this one.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, width=1000))
    return path


def write_down_config(cluster: ClusterFile, root: str | Path | None = None) -> Path:
    path = state_dir(cluster.name, root) / "ray-down.yaml"
    path.write_text(yaml.safe_dump(dict(cluster.ray), sort_keys=False))
    return path


def ray_cli() -> list[str]:
    """The `ray` command of this Python environment (the one whose ray we checked against)."""
    beside = Path(sys.executable).with_name("ray")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def up(cluster: ClusterFile, token: Token, root: str | Path | None = None,
       wait_s: float = DEFAULT_WAIT_S) -> Path:
    """`ray up -y` on the written config; return its path; raise ClusterError when Ray fails.

    For a local-provider cluster that lists its machines, every machine must
    answer over SSH before anything starts, and ``up`` returns only once each
    has joined the cluster (or raises naming the ones that did not).
    """
    hosts = node_hosts(cluster.ray)
    ssh = Ssh.of(cluster.ray) if hosts else None
    if ssh is not None:
        unreachable = ssh.unreachable(hosts)
        if unreachable:
            raise ClusterError(f"cannot log in over SSH as {ssh.user}"
                               f"{' with ' + ssh.key if ssh.key else ''} to {'; '.join(unreachable)}."
                               " Nothing was started")
    path = write_up_config(cluster, token, root)
    env, flags = dict(os.environ), []
    if hosts:
        # Ray 2.60's autoscaler v2 (ray up's default) started only one of two worker_ips here and
        # then reported no pending nodes; v1 starts every listed machine. An explicit setting wins.
        env.setdefault("RAY_UP_enable_autoscaler_v2", "0")
        # Up again on a running cluster: sync files and rerun setup, but leave Ray running. The start
        # commands hold no `ray stop` (it would stop every Ray on the machine), so a restart would
        # fail on the Ray already there; after `down`, the head is new and Ray starts as usual.
        flags.append("--no-restart")
    _run([*ray_cli(), "up", "-y", *flags, str(path)], "ray up", env)
    if ssh is not None:
        head = str(cluster.ray["provider"]["head_ip"])
        print(f"waiting up to {wait_s:g} s for {len(hosts)} nodes to join", flush=True)
        await_nodes(ssh, head, list(hosts), wait_s, auth_env(cluster.name), str(path))
    return path


def down(cluster: ClusterFile, root: str | Path | None = None) -> None:
    """`ray down -y`, then `ray stop` on every listed worker machine (Ray's down stops the head only)."""
    _run([*ray_cli(), "down", "-y", str(write_down_config(cluster, root))], "ray down")
    workers = [host for host, role in node_hosts(cluster.ray).items() if role == "worker"]
    if not workers:
        return
    done = Ssh.of(cluster.ray).run_all(workers, "ray stop", timeout=STOP_TIMEOUT_S)
    for host in (h for h, d in done.items() if d.returncode == 0):
        print(f"stopped Ray on {host}")
    failed = [f"{host}: {why(d)}" for host, d in done.items() if d.returncode != 0]
    if failed:
        raise ClusterError(f"the head is down, but `ray stop` failed over SSH on {'; '.join(failed)}:"
                           " Ray may still run there")


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    code = subprocess.call(command, env=env)  # Ray's own progress output goes straight to the terminal
    if code != 0:
        raise ClusterError(f"{what} failed (exit {code}): {shlex.join(command)}")
