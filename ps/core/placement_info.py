"""Which Ray node the calling actor runs on (for placement reports)."""

from __future__ import annotations


def this_node() -> dict:
    """The node's id and address, and the actor's process id (what to look at, or kill, on that node)."""
    import os

    import ray  # only inside an actor; unit tests of the plain classes never call this

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}
