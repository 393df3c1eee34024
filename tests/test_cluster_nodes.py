"""The SSH side of psctl up/down, without a cluster: logins, the node wait and its report.

The real thing (three machines in a namespace, sshd, ray up) is
tests/test_ssh_cluster.py; these check the pieces it is built from.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from rayps.errors import ClusterError, ConfigError
from rayps.launcher.cluster import nodes as cluster_nodes
from rayps.launcher.cluster.auth import Token
from rayps.launcher.cluster.provision import load_cluster_file, write_up_config
from rayps.launcher.cluster.nodes import RESULT_PREFIX, await_nodes, node_hosts, wait_here
from rayps.launcher.cluster.ssh import Ssh, login_shell, why

ROOT = Path(__file__).resolve().parents[1]


def test_the_ssh_example_names_a_head_and_two_workers_and_passes_rays_own_checks(tmp_path):
    from ray.autoscaler._private.util import prepare_config, validate_config  # Ray's private API; no cluster

    cluster = load_cluster_file(ROOT / "cluster-ssh.yaml")
    assert node_hosts(cluster.ray) == {"127.0.0.1": "head", "127.0.0.2": "worker", "127.0.0.3": "worker"}
    assert cluster.job.server_resources == {"ps_server": 1} and cluster.job.worker_resources == {"ps_worker": 1}
    prepared = prepare_config(yaml.safe_load(write_up_config(cluster, Token("t", "test"), root=tmp_path).read_text()))
    validate_config(prepared)
    head, worker = prepared["head_start_ray_commands"][-1], prepared["worker_start_ray_commands"][-1]
    assert "--resources='{\"ps_server\": 2}'" in head and "--dashboard-host=127.0.0.1" in head
    assert "--resources='{\"ps_worker\": 1}'" in worker
    assert all(c.startswith("export RAY_AUTH_MODE=token ") for c in (head, worker))


def test_only_a_local_provider_that_lists_its_machines_has_hosts():
    assert node_hosts({"provider": {"type": "aws", "region": "x"}}) == {}
    assert node_hosts({"provider": {"type": "local", "coordinator_address": "1.2.3.4:1"}}) == {}
    assert node_hosts({"provider": {"type": "local", "head_ip": "h", "worker_ips": ["h", "w"]}}) == {
        "h": "head", "w": "worker"}


def test_ssh_logs_in_with_the_configs_user_and_key_and_rays_host_key_options(tmp_path):
    key = tmp_path / "id"
    key.write_text("k")
    ssh = Ssh.of({"auth": {"ssh_user": "alice", "ssh_private_key": str(key), "ssh_proxy_command": "nc %h %p"}})
    argv = ssh.argv("10.0.0.5", "true")
    assert argv[0] == "ssh" and argv[-2:] == ["alice@10.0.0.5", "true"]
    options = " ".join(argv)
    for option in ("BatchMode=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                   f"-i {key}", "IdentitiesOnly=yes", "ProxyCommand=nc %h %p", "ConnectTimeout="):
        assert option in options


def test_a_missing_private_key_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"auth.ssh_private_key: .*/nope does not exist"):
        Ssh.of({"auth": {"ssh_user": "root", "ssh_private_key": str(tmp_path / "nope")}})


def test_remote_commands_run_in_a_login_shell_after_bashrc():
    assert login_shell("ray stop") == "bash --login -c -i 'source ~/.bashrc >/dev/null 2>&1; ray stop'"


def test_why_keeps_the_last_real_line_and_drops_bashs_job_control_notes():
    import subprocess

    done = subprocess.CompletedProcess([], 255, "", "bash: cannot set terminal process group (-1): x\n"
                                       "ssh: connect to host 10.0.0.9 port 22: No route to host\n"
                                       "bash: no job control in this shell\n")
    assert why(done) == "ssh: connect to host 10.0.0.9 port 22: No route to host"
    assert why(subprocess.CompletedProcess([], 3, "", "")) == "exit status 3"


def _result(out: io.StringIO) -> dict:
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(RESULT_PREFIX)
    return json.loads(last[len(RESULT_PREFIX):])


def test_wait_here_reports_each_node_as_it_joins(monkeypatch):
    monkeypatch.setattr(cluster_nodes, "POLL_S", 0)
    head = {"ip": "10.0.0.1", "resources": {"CPU": 2.0, "ps_server": 2.0, "node:10.0.0.1": 1.0, "memory": 9.0}}
    worker = {"ip": "10.0.0.2", "resources": {"CPU": 4.0, "ps_worker": 1.0}}
    answers = iter([RuntimeError("dashboard starting"), [head], [head, worker]])

    def alive():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    out = io.StringIO()
    assert wait_here(["10.0.0.1", "10.0.0.2"], timeout_s=30, list_alive=alive, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["  joined: 10.0.0.1 (CPU 2, ps_server 2)", "  joined: 10.0.0.2 (CPU 4, ps_worker 1)"]
    result = _result(out)
    assert result["missing"] == [] and result["alive"] == 2 and set(result["joined"]) == {"10.0.0.1", "10.0.0.2"}


def test_wait_here_names_who_is_missing_at_the_deadline(monkeypatch):
    monkeypatch.setattr(cluster_nodes, "POLL_S", 0.01)
    out = io.StringIO()
    alive = lambda: [{"ip": "10.0.0.1", "resources": {"CPU": 1.0}}]  # noqa: E731
    assert wait_here(["10.0.0.1", "10.0.0.2", "10.0.0.3"], timeout_s=0.05, list_alive=alive, out=out) == 1
    assert _result(out)["missing"] == ["10.0.0.2", "10.0.0.3"]


def test_wait_here_counts_nodes_that_joined_under_another_address(monkeypatch):
    """A machine Ray knows by another interface's address still counts: as many nodes as listed is enough."""
    monkeypatch.setattr(cluster_nodes, "POLL_S", 0)
    out = io.StringIO()
    alive = lambda: [{"ip": "10.0.0.1", "resources": {}}, {"ip": "192.168.1.7", "resources": {}}]  # noqa: E731
    assert wait_here(["10.0.0.1", "10.0.0.2"], timeout_s=5, list_alive=alive, out=out) == 0
    assert _result(out)["missing"] == []


class _Scripted(Ssh):
    """An Ssh whose "remote" side is a local Python printing what the head would."""

    def __init__(self, script: str):
        super().__init__(user="test")
        object.__setattr__(self, "script", script)

    def argv(self, host, remote):
        return [sys.executable, "-c", self.script]


def test_await_nodes_echoes_progress_and_raises_naming_who_did_not_join():
    result = {"joined": {"10.0.0.1": {}}, "missing": ["10.0.0.3"], "alive": 1, "error": None}
    ssh = _Scripted(f"print('  joined: 10.0.0.1 (CPU 1)'); print({RESULT_PREFIX + json.dumps(result)!r})")
    echoed = []
    with pytest.raises(ClusterError, match=r"^10\.0\.0\.3 did not join the cluster within 5 s \(1 of 2 nodes"
                       r" are up\)\. .*ray exec /x/ray-up.yaml 'tail -n 100"):
        await_nodes(ssh, "10.0.0.1", ["10.0.0.1", "10.0.0.3"], 5, "", "/x/ray-up.yaml", echo=echoed.append)
    assert echoed == ["  joined: 10.0.0.1 (CPU 1)"]


def test_await_nodes_says_when_the_head_could_not_be_asked():
    ssh = _Scripted("import sys; print('python: No module named rayps', file=sys.stderr); sys.exit(1)")
    with pytest.raises(ClusterError, match=r"could not ask the head 10.0.0.1 which nodes joined \(exit 1\):"
                       r" python: No module named rayps"):
        await_nodes(ssh, "10.0.0.1", ["10.0.0.1"], 5, "", echo=lambda line: None)
