"""Which Ray node the calling actor runs on (for placement reports), and which process it is.

A process id is how the controller tells a restarted shard from the life it
watched. An in-process runtime (tests/local_runtime.py) runs each actor on
threads of its own and gives each life a process id of its own; it says so
through ``act_as`` on those threads, as Ray's runtime context does for a
real actor.
"""

from __future__ import annotations

import os
import threading

_acting = threading.local()


def act_as(node: dict | None) -> None:
    """Say, on this thread, which node and process the actor running here stands for (None: the real one)."""
    _acting.node = dict(node) if node is not None else None


def acting() -> dict | None:
    """The node and process an in-process actor on this thread stands for; None in a real process."""
    return getattr(_acting, "node", None)


def this_pid() -> int:
    """The calling actor's process id."""
    node = acting()
    return node["pid"] if node is not None else os.getpid()


def this_node() -> dict:
    """The node's id and address, and the actor's process id (what to look at, or kill, on that node)."""
    node = acting()
    if node is not None:
        return dict(node)
    import ray  # only inside an actor; unit tests of the plain classes never call this

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def peak_rss_bytes() -> int:
    """The most resident memory this process has held (Linux: its VmHWM)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """This process's resident memory now (Linux's /proc; elsewhere its peak, which is all it says)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
