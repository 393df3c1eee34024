"""Which Ray node the calling actor runs on (for placement reports)."""

from __future__ import annotations


def this_node() -> dict:
    import ray  # only inside an actor; unit tests of the plain classes never call this

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
