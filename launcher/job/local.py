"""Connecting to Ray: a local single-node instance unless an address is given."""

from __future__ import annotations

import os

import ray


def ensure_ray(dashboard: bool = True) -> str | None:
    """Start (or join) Ray once per process; return the dashboard URL, if one runs.

    With ``RAY_ADDRESS`` set (a job submitted to a cluster) we join that
    cluster; otherwise we start a fresh local instance (``address="local"``),
    never attaching by accident to another cluster on the same machine.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1")
    try:
        from ray._private.worker import get_dashboard_url  # no public accessor in Ray 2.x
        url = get_dashboard_url()
    except Exception:  # a private API: losing the URL must never fail a job
        url = None
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
