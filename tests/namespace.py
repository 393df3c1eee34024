"""A private Linux namespace to stand for a few machines: its own processes, network and mounts.

``unshare --pid --net --mount --fork --mount-proc`` starts an init process
in new namespaces. Inside:

- the network is loopback only, so 127.0.0.1, 127.0.0.2 and 127.0.0.3 stand
  for separate machines, and no port is shared with the machine outside;
- /proc shows only the namespace's processes, so ``ray stop`` (which looks
  for Ray processes there) cannot reach any Ray instance outside;
- /tmp, /run and /dev/shm are fresh tmpfs mounts, and /root is an overlay
  whose writes land in that tmpfs: what a node writes to its home (the
  project's copy, keys, tokens, ``pip install``) never reaches the real one.
  ``shared`` (a folder outside) appears inside as /tmp/shared, and each
  folder of ``keep`` that lies under /tmp (a checkout cloned there) at its
  own path.
- each folder of ``protect`` (the Python environment the tests run from:
  a virtualenv anywhere, a system site-packages) is an overlay too, so a
  node's ``pip install -e ~/rayps`` lands in the tmpfs and the environment
  outside is as it was. One under /tmp is read through a bind of the real
  folder made before /tmp is replaced.

The init process reaps the orphans that daemons leave behind, so a process
list inside shows what is really running. Killing it (``close``) makes the
kernel kill everything left in the namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

INSIDE_SHARED = "/tmp/shared"

_SETUP = r"""
set -euo pipefail
stage="$1"; shared="$2"; keep="$5"; protect="$6"
ip link set lo up
mount -t tmpfs -o size=8g,mode=1777 tmpfs "$stage"
mkdir "$stage/shared"
mount --bind "$shared" "$stage/shared"
# Folders under /tmp that must stay visible (a checkout cloned there): the same path inside.
for path in $keep; do
    mkdir -p "$stage/${path#/tmp/}"
    mount --bind "$path" "$stage/${path#/tmp/}"
done
# The real folders the overlays below read from, reached before /tmp is replaced.
n=0
for path in $protect; do
    n=$((n + 1))
    mkdir -p "$stage/.lower/$n"
    mount --bind "$path" "$stage/.lower/$n"
done
mount --move "$stage" /tmp
mkdir -p /tmp/.home/upper /tmp/.home/work
mount -t overlay overlay -o lowerdir=/root,upperdir=/tmp/.home/upper,workdir=/tmp/.home/work /root
n=0
for path in $protect; do
    n=$((n + 1))
    mkdir -p "/tmp/.upper/$n" "/tmp/.work/$n" "$path"
    mount -t overlay overlay -o "lowerdir=/tmp/.lower/$n,upperdir=/tmp/.upper/$n,workdir=/tmp/.work/$n" "$path"
done
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
touch /tmp/shared/.ready
exec "$3" -c "$4"
"""

# PID 1 of the namespace: reap every child (daemons orphan theirs), exit on SIGTERM.
_INIT = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def available() -> str | None:
    """Why a namespace cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (unshare --net and mounts)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def python_environment() -> list[Path]:
    """The folders a ``pip install`` by this interpreter writes to, outermost only, leaving out those under
    /root (the namespace overlays /root whole)."""
    import site
    import sys
    import sysconfig

    found = [Path(sys.prefix), *map(Path, site.getsitepackages()),
             *(Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib", "scripts"))]
    folders = sorted({p.resolve() for p in found if p.is_dir()}, key=lambda p: len(p.parts))
    outer: list[Path] = []
    for folder in folders:
        if not folder.is_relative_to("/root") and not any(folder.is_relative_to(o) for o in outer):
            outer.append(folder)
    return outer


class Namespace:
    def __init__(self, shared: Path, python: str, keep: tuple[Path, ...] = (), protect: tuple[Path, ...] = ()):
        self.shared = Path(shared)
        self.shared.mkdir(parents=True, exist_ok=True)
        stage = self.shared.parent / (self.shared.name + "-stage")
        stage.mkdir(exist_ok=True)
        under_tmp = [str(Path(p).resolve()) for p in keep if Path(p).resolve().is_relative_to("/tmp")]
        copy_on_write = [str(Path(p).resolve()) for p in protect]
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--net", "--mount", "--fork", "--mount-proc", "--kill-child",
             "bash", "-c", _SETUP, "setup", str(stage), str(self.shared), python, _INIT, " ".join(under_tmp),
             " ".join(copy_on_write)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not (self.shared / ".ready").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the namespace did not start: {self.proc.stdout.read()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the namespace did not start within 30 s")
            time.sleep(0.05)
        self.init_pid = self._child_of(self.proc.pid)

    @staticmethod
    def _child_of(pid: int) -> int:
        for _ in range(100):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise RuntimeError(f"unshare ({pid}) has no child")

    def command(self, argv: list[str], cwd: str = INSIDE_SHARED) -> list[str]:
        """``argv`` run inside: in the namespace's network, mounts and processes, from ``cwd``."""
        return ["nsenter", "-t", str(self.init_pid), "--net", "--mount", "--pid", "--", "env", "-C", cwd, *argv]

    def run(self, argv: list[str], *, env: dict[str, str], timeout: float, cwd: str = INSIDE_SHARED,
            check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(argv, cwd), env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def processes(self) -> list[str]:
        """Every process inside, as ``pid command line``."""
        out = subprocess.run(self.command(["ps", "-eo", "pid=,args="]), capture_output=True, text=True, timeout=30)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare and its init: the kernel kills the rest
            self.proc.wait(timeout=30)
