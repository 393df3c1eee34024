"""A cluster of "machines" on one Linux host: network namespaces joined by shaped links, a Ray node in each.

``psctl bench --nodes N --link RATE`` measures rayps and DDP between
machines without having any: each node is a network namespace with one
interface (``eth0``, 10.R.0.<i+1>) on a veth pair to a bridge in a hub
namespace. Both ends of every pair carry a ``tc`` token-bucket filter at
RATE, so a node sends at most RATE and receives at most RATE, each way at
once (full duplex), as a machine's NIC would. Traffic between two processes
of one node stays on that node's loopback, unshaped, as it would on one
machine. A Ray node runs in each namespace (``ray start --block``, token
auth on, its own temp dir), the head in node 0; the bench's driver runs in
node 0 too.

What it does not model: the CPU. Every "machine" shares this host's cores,
so a node's compute, its serialization and encryption, and the other nodes'
all compete for the same ones (on 2 cores, hard); shared memory between
namespaces is not used (rayps picks transports by Ray node, and these are
different nodes). Latency is the host's (tens of microseconds); ``tbf``
adds queueing, not propagation delay (``netem`` does not work here).

Needs root and ``ip``/``tc`` (iproute2). Everything it starts it ends by its
own handles: the ``ray start`` processes by their process group, then any
process left in its namespaces by the pids ``ip netns pids`` lists, then the
namespaces themselves.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError

RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit|b)?(?:/s|ps)?\s*$", re.IGNORECASE)
RAY_PORT = 6390
JOIN_S = 90.0  # how long every Ray node may take to join the head


def parse_rate(text: str) -> int:
    """'1gbit', '10Gbit/s', '100mbit' -> bits per second."""
    found = RATE.match(str(text))
    if not found:
        raise ConfigError(f"--link {text!r} is not a rate: give one like 10gbit, 1gbit or 100mbit")
    bits = float(found[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[found[2].lower()]
    if bits < 1e6:
        raise ConfigError(f"--link {text!r} is under 1 Mbit/s: too slow for a bench")
    return int(bits)


def rate_name(bits: int) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits} bit/s"


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run psctl bench --nodes as root, or in a container that is)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


@dataclass
class Node:
    index: int
    namespace: str
    address: str
    resources: dict
    process: subprocess.Popen | None = None
    temp_dir: str = ""


@dataclass
class NamespaceCluster:
    """``nodes`` namespaces on links of ``rate_bits`` each way; ``resources[i]``: node i's custom resources."""

    nodes: int
    rate_bits: int
    resources: list[dict] = field(default_factory=list)
    cpus_per_node: int = 2
    queue_ms: float = 50.0  # how long a packet may wait in a link's token bucket before it is dropped

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ConfigError(f"--nodes {self.nodes}: a cluster needs at least 2 nodes")
        self.tag = f"rps{secrets.token_hex(2)}"  # short: interface names are at most 15 characters
        self.subnet = f"10.{200 + int(self.tag[-2:], 16) % 50}.{int(self.tag[-4:-2], 16)}"
        self.hub = f"{self.tag}-hub"
        self.token = secrets.token_hex(32)
        self._root = tempfile.mkdtemp(prefix=f"{self.tag}-")
        self.members = [Node(i, f"{self.tag}-n{i}", f"{self.subnet}.{i + 1}",
                             self.resources[i] if i < len(self.resources) else {}) for i in range(self.nodes)]
        self._made: list[str] = []

    @property
    def head_address(self) -> str:
        return f"{self.members[0].address}:{RAY_PORT}"

    def env(self) -> dict[str, str]:
        """What a process joining this cluster needs in its environment."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_ADDRESS": self.head_address, "GLOO_SOCKET_IFNAME": "eth0",
                "RAY_USAGE_STATS_ENABLED": "0"}

    # ---- up and down ------------------------------------------------------------------------

    def __enter__(self) -> "NamespaceCluster":
        why = unavailable()
        if why:
            raise ConfigError(f"psctl bench --nodes: {why}")
        try:
            self._network()
            self._ray()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _network(self) -> None:
        rate = str(self.rate_bits)
        # a burst of one tick at the rate (HZ 250 at most here), and never under 64 KB
        burst = max(64 * 1024, self.rate_bits // 8 // 250)
        shape = ["root", "tbf", "rate", f"{rate}bit", "burst", str(burst), "latency", f"{self.queue_ms:g}ms"]
        self._ip("netns", "add", self.hub)
        self._made.append(self.hub)
        self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.hub, "link", "set", "br0", "up")
        for node in self.members:
            outside, inside = f"{self.tag}-p{node.index}", f"{self.tag}-v{node.index}"
            self._ip("netns", "add", node.namespace)
            self._made.append(node.namespace)
            self._ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            self._ip("link", "set", inside, "netns", node.namespace)
            self._ip("link", "set", outside, "netns", self.hub)
            self._ip("-n", node.namespace, "link", "set", inside, "name", "eth0")
            self._ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0")
            self._ip("-n", node.namespace, "link", "set", "eth0", "up")
            self._ip("-n", node.namespace, "link", "set", "lo", "up")
            self._ip("-n", self.hub, "link", "set", outside, "master", "br0")
            self._ip("-n", self.hub, "link", "set", outside, "up")
            _run(["tc", "-n", node.namespace, "qdisc", "add", "dev", "eth0", *shape])  # what the node sends
            _run(["tc", "-n", self.hub, "qdisc", "add", "dev", outside, *shape])  # what it receives

    def _ray(self) -> None:
        import json

        for node in self.members:
            node.temp_dir = os.path.join(self._root, f"n{node.index}")
            argv = [_ray_cli(), "start", "--block", f"--node-ip-address={node.address}",
                    f"--temp-dir={node.temp_dir}", f"--num-cpus={self.cpus_per_node}",
                    f"--resources={json.dumps(node.resources)}", "--disable-usage-stats"]
            argv += (["--head", f"--port={RAY_PORT}", "--include-dashboard=false"] if node.index == 0
                     else [f"--address={self.head_address}"])
            log = open(os.path.join(self._root, f"ray-n{node.index}.log"), "w")
            node.process = subprocess.Popen(self.command(node.index, argv), env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            if node.index == 0:
                self._await_nodes(1)
        self._await_nodes(self.nodes)

    def _await_nodes(self, count: int) -> None:
        probe = ("import ray; ray.init(address='auto', logging_level='ERROR');"
                 "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + JOIN_S
        seen = "nothing"
        while time.monotonic() < deadline:
            for node in self.members:
                if node.process is not None and node.process.poll() is not None:
                    raise ConfigError(f"the Ray node in {node.namespace} exited ({node.process.returncode});"
                                      f" its log: {self._root}/ray-n{node.index}.log")
            done = subprocess.run(self.command(0, [sys.executable, "-c", probe]), env=self.env(),
                                  capture_output=True, text=True, timeout=60)
            seen = (done.stdout.strip().splitlines() or [done.stderr.strip()[-200:]])[-1]
            if done.returncode == 0 and seen.isdigit() and int(seen) >= count:
                return
            time.sleep(1.0)
        raise ConfigError(f"only {seen} of {count} Ray nodes joined in {JOIN_S:g} s; logs in {self._root}")

    def command(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` to run inside node ``index``'s namespace."""
        return ["ip", "netns", "exec", self.members[index].namespace, *argv]

    def close(self) -> None:
        """End every Ray node (by its process group), anything else left in the namespaces, then them."""
        for node in self.members:
            if node.process is not None and node.process.poll() is None:
                _signal_group(node.process.pid, signal.SIGTERM)
        for node in self.members:
            if node.process is not None:
                try:
                    node.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    _signal_group(node.process.pid, signal.SIGKILL)
        for name in reversed(self._made):
            for pid in _pids_in(name):  # only processes in a namespace this cluster made
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def _ip(self, *args: str) -> None:
        _run(["ip", *args])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_in(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]
