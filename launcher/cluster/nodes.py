"""The machines of a local-provider cluster, and waiting until each has joined it.

``ray up`` returns once the head runs; the worker machines are started later
by the autoscaler on the head, each after its file mounts and setup
commands. A job submitted before they join would fail at once (its workers
ask for ``ps_worker``, which nobody offers yet). So ``psctl up`` waits for
them: ``wait_here`` runs on the head (``psctl wait-nodes``, over SSH, where
the dashboard is reachable even when it listens on 127.0.0.1 only), prints
each machine as it joins, and ends with one ``rayps-nodes {json}`` line that
``await_nodes`` reads back.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

from ...errors import ClusterError
from .ssh import Ssh, login_shell

RESULT_PREFIX = "rayps-nodes "
POLL_S = 2.0


def node_hosts(config: Mapping[str, Any]) -> dict[str, str]:
    """``{address: "head" | "worker"}`` of a local-provider config that lists its machines; else {}."""
    provider = config["provider"]
    if provider.get("type") != "local" or "coordinator_address" in provider:
        return {}
    hosts = {str(provider["head_ip"]): "head"}
    for ip in provider.get("worker_ips") or []:
        hosts.setdefault(str(ip), "worker")
    return hosts


def alive_nodes() -> list[dict]:
    """The cluster's live nodes as seen from the head: address and total resources."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address="auto", filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    return [{"ip": n.node_ip, "resources": dict(n.resources_total or {})} for n in nodes]


def wait_here(expected: list[str], timeout_s: float, list_alive: Callable[[], list[dict]] = alive_nodes,
              out=sys.stdout) -> int:
    """Poll until a node has joined at every address in ``expected`` (or as many nodes have); 0 if so."""
    deadline = time.monotonic() + timeout_s
    joined: dict[str, dict] = {}
    error = None
    while True:
        try:
            nodes = list_alive()
            error = None
        except Exception as e:  # the dashboard may still be starting: keep asking until the deadline
            nodes, error = [], f"{type(e).__name__}: {e}"
        count = len(nodes)
        for node in nodes:
            if node["ip"] not in joined:
                joined[node["ip"]] = node["resources"]
                shown = ", ".join(f"{k} {v:g}" for k, v in sorted(node["resources"].items())
                                  if not k.startswith(("node:", "memory", "object_store")))
                print(f"  joined: {node['ip']} ({shown})", file=out, flush=True)
        missing = [ip for ip in expected if ip not in joined]
        done = not missing or count >= len(expected)
        if done or time.monotonic() >= deadline:
            result = {"joined": joined, "missing": [] if done else missing, "alive": count, "error": error}
            print(RESULT_PREFIX + json.dumps(result), file=out, flush=True)
            return 0 if done else 1
        time.sleep(POLL_S)


def wait_command(expected: list[str], timeout_s: float, env_prefix: str) -> str:
    """The shell command that runs ``wait_here`` on the head, with the cluster's token in its environment."""
    args = shlex.join(["python", "-m", "rayps", "wait-nodes", *expected, "--timeout", f"{timeout_s:g}"])
    return env_prefix + args


def await_nodes(ssh: Ssh, head: str, expected: list[str], timeout_s: float, env_prefix: str,
                ray_config: str = "<ray-up.yaml>", echo: Callable[[str], None] = print) -> dict:
    """Run the wait on the head over SSH, echo its progress; raise ClusterError naming who never joined."""
    argv = ssh.argv(head, login_shell(wait_command(expected, timeout_s, env_prefix)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    result = None
    try:
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
            elif line.strip():
                echo(line.rstrip())
        proc.wait(timeout=timeout_s + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    if result is None:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ClusterError(f"could not ask the head {head} which nodes joined (exit {proc.returncode}): {tail}")
    if result["missing"]:
        why = f"; the last query failed: {result['error']}" if result["error"] else ""
        raise ClusterError(
            f"{', '.join(result['missing'])} did not join the cluster within {timeout_s:g} s "
            f"({len(result['joined'])} of {len(expected)} nodes are up{why}). The autoscaler on the head "
            f"says why: ray exec {ray_config} 'tail -n 100 /tmp/ray/session_latest/logs/monitor*'")
    return result["joined"]
