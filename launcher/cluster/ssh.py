"""SSH to the machines a local-provider cluster.yaml names, the way Ray's launcher does.

``ray up`` reaches each machine with ``auth.ssh_user`` and
``auth.ssh_private_key``; psctl uses the same user, key, proxy command and
host-key options for what Ray does not do itself: check every machine answers
before anything starts, and stop Ray on the workers at ``down`` (``ray down``
stops it on the head only). Remote commands run in a login shell that reads
``~/.bashrc``, as Ray's own do, so they find the same ``python`` and ``ray``.
"""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Ssh:
    user: str
    key: str | None = None
    proxy_command: str | None = None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Ssh":
        """The login Ray's launcher uses for this config (its ``auth:`` section)."""
        auth = config.get("auth") or {}
        key = auth.get("ssh_private_key")
        if key is not None and not Path(key).expanduser().is_file():
            raise ConfigError(f"auth.ssh_private_key: {key} does not exist (the key that logs in to every node)")
        return cls(user=auth["ssh_user"], key=key, proxy_command=auth.get("ssh_proxy_command"))

    def argv(self, host: str, remote: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                   # What Ray's SSHCommandRunner passes: the launcher does not keep host keys either.
                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        if self.key is not None:
            options += ["-i", str(Path(self.key).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.proxy_command:
            options += ["-o", f"ProxyCommand={self.proxy_command}"]
        return ["ssh", *options, f"{self.user}@{host}", remote]

    def run(self, host: str, command: str, timeout: float) -> subprocess.CompletedProcess:
        """``command`` in a login shell on ``host``; ssh's own failures come back as exit 255."""
        try:
            return subprocess.run(self.argv(host, login_shell(command)), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], 124, "", f"no answer within {timeout:.0f} s")

    def run_all(self, hosts, command: str, timeout: float) -> dict[str, subprocess.CompletedProcess]:
        """``command`` on every host at once; what each returned, by host."""
        hosts = list(hosts)
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
            return dict(zip(hosts, pool.map(lambda host: self.run(host, command, timeout), hosts)))

    def unreachable(self, hosts: Mapping[str, str]) -> list[str]:
        """One line per host of ``{host: role}`` that cannot be logged in to, naming it and why."""
        done = self.run_all(hosts, "true", timeout=CONNECT_TIMEOUT_S + 20)
        return [f"{hosts[host]} {host}: {why(d)}" for host, d in done.items() if d.returncode != 0]


def login_shell(command: str) -> str:
    """``command`` as Ray runs its own on a node: bash, login and interactive, after ~/.bashrc."""
    return "bash --login -c -i " + shlex.quote(f"source ~/.bashrc >/dev/null 2>&1; {command}")


def why(done: subprocess.CompletedProcess) -> str:
    """The last meaningful line ssh or the remote command printed (bash's job-control notes left out)."""
    noise = ("cannot set terminal process group", "no job control in this shell")
    lines = [line.strip() for line in (done.stderr or "").splitlines()
             if line.strip() and not any(n in line for n in noise)]
    return lines[-1] if lines else f"exit status {done.returncode}"
