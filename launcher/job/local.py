"""Connecting to Ray: a local single-node instance unless an address is given (runtime.py starts it)."""

from __future__ import annotations

from ...runtime import RAY


def ensure_ray(dashboard: bool = True) -> str | None:
    """Start (or join) Ray once per process; return the dashboard URL, if one runs."""
    return RAY.start(dashboard)
