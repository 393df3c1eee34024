"""psctl up, submit, status, logs and down on a cluster Ray's launcher provisions over SSH.

Three "machines" live in a private namespace (tests/namespace.py): one sshd
listens on 127.0.0.1, 127.0.0.2 and 127.0.0.3, and the shipped
cluster-ssh.yaml names them head and workers. Every psctl command runs
inside, as a user on a fourth machine would run it. ``ray stop`` (which
``psctl down`` runs on every node) sees only the namespace's processes, and
the test checks that the Ray instances outside it, the test session's own
among them, are still running afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.namespace import INSIDE_SHARED, Namespace, available, python_environment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster-ssh.yaml"
SSHD = "/usr/sbin/sshd"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The machines: an sshd on the three addresses, a key for the test, and a ~/.bashrc that puts
# this Python first and keeps pip offline (the namespace has no network), both in the
# namespace's own overlay of /root.
_MACHINES = r"""
set -euo pipefail
mkdir -p /tmp/sshd /run/sshd /root/.ssh
chmod 700 /root/.ssh
ssh-keygen -q -t ed25519 -N "" -f /tmp/sshd/host_key
rm -f /root/.ssh/id_ed25519 /root/.ssh/id_ed25519.pub
ssh-keygen -q -t ed25519 -N "" -f /root/.ssh/id_ed25519
cat /root/.ssh/id_ed25519.pub > /root/.ssh/authorized_keys
{
  for ip in $ADDRESSES; do echo "ListenAddress $ip"; done
  echo "HostKey /tmp/sshd/host_key"
  echo "PermitRootLogin prohibit-password"
  echo "PasswordAuthentication no"
  echo "KbdInteractiveAuthentication no"
  echo "UsePAM no"
  echo "PidFile /tmp/sshd/sshd.pid"
} > /tmp/sshd/sshd_config
"$SSHD" -f /tmp/sshd/sshd_config -E /tmp/sshd/log
printf '\nexport PATH=%s:$PATH PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0\n' "$BINDIR" >> /root/.bashrc
"""


def _session_ray_processes(ray) -> set[int]:
    """The PIDs of the test session's own Ray instance (its GCS, raylet, dashboard...), running outside."""
    node = ray._private.worker._global_node
    return {info.process.pid for infos in node.all_processes.values() for info in infos}


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    why = available()
    if why is None and not os.access(SSHD, os.X_OK):
        why = f"{SSHD} is missing (apt-get install openssh-server; .ci/run does)"
    if why is not None:
        pytest.skip(f"an SSH cluster in a namespace {why}")
    shared = tmp_path_factory.mktemp("ssh-cluster") / "shared"
    # The Python environment the tests run from (a virtualenv under /opt, say) is copy-on-write inside:
    # the nodes' `pip install -e ~/rayps` must not repoint its rayps at a path only the namespace has.
    ns = Namespace(shared, sys.executable, keep=(ROOT,), protect=tuple(python_environment()))
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "BINDIR": bindir, "SSHD": SSHD, "ADDRESSES": " ".join(ADDRESSES)}
    try:
        ns.run(["bash", "-c", _MACHINES], env=env, timeout=60, check=True)
        yield ns, env, shared
    finally:
        ns.close()


def psctl(ns: Namespace, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return ns.run([sys.executable, "-m", "rayps", *args], env=env, timeout=timeout)


def output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-4000:]}"


def test_up_and_down_name_the_machine_that_does_not_answer_and_up_starts_nothing(machines):
    ns, env, shared = machines
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["worker_ips"] = ["127.0.0.2", "127.0.0.9"]  # nothing listens on .9
    config["cluster_name"] = "unreachable"
    path = shared / "unreachable.yaml"
    path.write_text(yaml.safe_dump(config))
    began = time.monotonic()
    done = psctl(ns, env, "up", f"{INSIDE_SHARED}/unreachable.yaml", timeout=120)
    assert done.returncode == 2, output(done)
    message = done.stderr
    assert ("cannot log in over SSH as root with ~/.ssh/id_ed25519 to worker 127.0.0.9: ssh: connect to host"
            " 127.0.0.9 port 22: Connection refused. Nothing was started") in message, output(done)
    assert "127.0.0.2" not in message, output(done)  # it answered
    assert time.monotonic() - began < 60
    assert not [p for p in ns.processes() if _is_ray(p)], ns.processes()

    # down on the same file: the machine that answers is stopped, the one that does not is named.
    done = psctl(ns, env, "down", f"{INSIDE_SHARED}/unreachable.yaml", timeout=120)
    assert done.returncode == 2, output(done)
    assert "stopped Ray on 127.0.0.2" in done.stdout, output(done)
    assert ("the head is down, but `ray stop` failed over SSH on 127.0.0.9: ssh: connect to host 127.0.0.9"
            " port 22: Connection refused: Ray may still run there") in done.stderr, output(done)


def _is_ray(process: str) -> bool:
    # Ray's daemons and workers; not sshd, nor the ssh multiplexer Ray leaves for 10 s (/tmp/ray_ssh_...).
    return any(mark in process for mark in ("raylet", "gcs_server", "ray::", "site-packages/ray/", "ray.util.client"))


def test_up_submit_status_logs_and_down_on_three_machines_over_ssh(machines, ray_session):
    ns, env, shared = machines
    outside = _session_ray_processes(ray_session)
    assert outside and all(_running(pid) for pid in outside)
    home = Path.home()
    written_inside = [home / "rayps", home / ".rayps" / "clusters" / "rayps-ssh", home / "ray_bootstrap_config.yaml",
                      home / ".rayps" / "rayps-ssh", Path("/tmp/ray/cluster-rayps-ssh.state")]
    existed = {path: path.exists() for path in written_inside}

    began = time.monotonic()
    up = psctl(ns, env, "up", str(CONFIG), timeout=480)
    assert up.returncode == 0, output(up)
    for ip in ("127.0.0.2", "127.0.0.3"):
        assert f"joined: {ip} (CPU " in up.stdout and "ps_worker 1" in up.stdout, output(up)
    assert "joined: 127.0.0.1 (CPU " in up.stdout and "ps_server 2" in up.stdout, output(up)
    assert "cluster 'rayps-ssh' is up" in up.stdout and "dashboard: http://127.0.0.1:8265" in up.stdout
    up_s = time.monotonic() - began

    run_dir = f"{INSIDE_SHARED}/run"
    submit = psctl(ns, env, "submit", str(CONFIG), "--set", "epochs=2", "--output", run_dir, timeout=300)
    assert submit.returncode == 0, output(submit)
    job_id = submit.stdout.split("submitted ", 1)[1].split()[0]
    assert f"job {job_id} SUCCEEDED" in submit.stdout, output(submit)
    assert '"test_accuracy"' in submit.stdout and f"run directory: {run_dir}" in submit.stdout  # streamed back
    summary = json.loads((shared / "run" / "summary.json").read_text())
    placement = summary["placement"]
    assert {placement[f"ps-shard-{i}"]["node_ip"] for i in range(2)} == {"127.0.0.1"}  # the ps_server node
    assert {placement[f"worker-{i}"]["node_ip"] for i in range(2)} == {"127.0.0.2", "127.0.0.3"}
    assert summary["transport"] == "grpc"  # shards and workers on different nodes
    assert summary["test_accuracy"] > 0.5

    status = psctl(ns, env, "status", str(CONFIG), timeout=60)
    row = next((line for line in status.stdout.splitlines() if line.startswith(job_id)), None)
    assert row is not None and row.split()[1] == "SUCCEEDED", output(status)
    logs = psctl(ns, env, "logs", job_id, str(CONFIG), timeout=60)
    assert logs.returncode == 0 and "test accuracy" in logs.stdout, output(logs)

    probe = ("import sys, urllib.request, urllib.error\n"
             "request = urllib.request.Request('http://127.0.0.1:8265/api/jobs/', headers=dict(h.split(': ', 1) for h in sys.argv[1:]))\n"
             "try:\n    print(urllib.request.urlopen(request, timeout=10).status)\n"
             "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    anonymous = ns.run([sys.executable, "-c", probe], env=env, timeout=30)
    assert anonymous.stdout.strip() == "401", output(anonymous)
    token = ns.run(["cat", "/root/.ray/auth_token"], env=env, timeout=10, check=True).stdout.strip()
    signed = ns.run([sys.executable, "-c", probe, f"Authorization: Bearer {token}"], env=env, timeout=30)
    assert signed.stdout.strip() == "200", output(signed)  # the 401 was the token, not a broken server

    # Token auth on every node: each raylet was started with it, at the address the file names.
    raylets = ns.run(["bash", "-c", "for p in $(pgrep -x raylet); do"
                      " echo $(tr ' ' '\\n' < /proc/$p/cmdline | tr '\\0' '\\n' | grep -o 'node_ip_address=.*')"
                      " $(tr '\\0' '\\n' < /proc/$p/environ | grep '^RAY_AUTH_MODE='); done"],
                     env=env, timeout=30, check=True).stdout.split("\n")
    assert sorted(line for line in raylets if line) == [
        f"node_ip_address={ip} RAY_AUTH_MODE=token" for ip in ADDRESSES], raylets

    assert [p for p in ns.processes() if _is_ray(p)]  # the cluster was running until now
    down = psctl(ns, env, "down", str(CONFIG), timeout=180)
    assert down.returncode == 0, output(down)
    assert "stopped Ray on 127.0.0.2" in down.stdout and "stopped Ray on 127.0.0.3" in down.stdout, output(down)
    assert "cluster 'rayps-ssh' is down" in down.stdout
    left = [p for p in ns.processes() if _is_ray(p)]
    assert not left, left

    assert all(_running(pid) for pid in outside)  # nothing outside was stopped
    # The environment the tests run from still imports this checkout (the nodes installed theirs inside).
    where = subprocess.run([sys.executable, "-c", "import rayps; print(rayps.__file__)"], cwd="/",
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(ROOT / "__init__.py"), where.stdout + where.stderr
    assert {path: path.exists() for path in written_inside} == existed  # the nodes wrote these inside only
    assert ray_session.get(ray_session.remote(lambda: 42).remote(), timeout=60) == 42
    print(f"psctl up took {up_s:.0f} s; the whole cycle {time.monotonic() - began:.0f} s")
