"""How the job's code waits on, and kills, its actors: Ray's calls behind one small interface.

The driver starts its actors through a ``Runtime`` (``spawn``), and the
controller, the checkpointer, the worker's work-queue client and the
object-store transport's client call them in Ray's handle style
(``actor.method.remote(...)`` gives a reference) and hand the references to
the runtime to wait on or read. What they tell apart when an actor fails is
named by the runtime too, so the same code runs on Ray (``RayRuntime``, the
default everywhere) and in one process (tests/local_runtime.py: a whole job
on threads, for the tests whose claim is not about processes).

This module is a leaf beside errors.py: the launcher, the worker and the
transport all take a runtime, and imports point down only.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class Runtime(Protocol):
    #: An actor's process is gone: a call to it, or one in flight, fails with this. The two below are kinds of it.
    ActorError: type[BaseException]
    #: ... for good: it will not be restarted (its restarts are spent, or it was killed).
    ActorDiedError: type[BaseException]
    #: ... for now: it is restarting (or cannot be reached); calls after the restart succeed again.
    ActorUnavailableError: type[BaseException]
    #: ``get`` ran out of time; the call may still finish.
    GetTimeoutError: type[BaseException]

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        """The result of one reference, or a list of results for a list; raises what the call raised."""

    def wait(self, refs: Sequence, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        """``(ready, not_ready)`` once ``num_returns`` of ``refs`` are done or ``timeout`` passed."""

    def kill(self, actor: Any, no_restart: bool = True) -> None:
        """End the actor's process at once (no cleanup); with ``no_restart=False`` it may be restarted."""

    def sigkill(self, actor: Any, where: dict) -> None:
        """SIGKILL the actor's process, which answered ``where`` (its ``node_id`` and ``pid``), as an OOM
        killer or an operator would: no cleanup runs, and Ray restarts it if it has restarts left."""

    def spawn(self, cls: type, args: tuple = (), kwargs: dict | None = None, options: dict | None = None) -> Any:
        """``cls(*args, **kwargs)`` as an actor; ``options`` are Ray's actor options (name, resources, ...)."""

    def put(self, value: Any) -> Any:
        """``value`` where every actor can read it (what a call may take in its place)."""

    def nodes(self) -> list[dict]:
        """The cluster's nodes as Ray describes them (``Alive``, ``Resources``, ...)."""

    def start(self, dashboard: bool = True) -> str | None:
        """Be ready to spawn actors; the dashboard's URL, if one runs."""


#: ``ray.remote(cls)``, once per class (each call would wrap, and export, the class again).
_ACTOR_CLASSES: dict[type, Any] = {}


class RayRuntime:
    """The real runtime: Ray's own calls. It holds nothing, so it pickles by reference to workers."""

    @property
    def ActorError(self):  # noqa: N802 - an exception class, named as the Runtime protocol names it
        from ray.exceptions import RayActorError
        return RayActorError

    @property
    def ActorDiedError(self):  # noqa: N802
        from ray.exceptions import ActorDiedError
        return ActorDiedError

    @property
    def ActorUnavailableError(self):  # noqa: N802
        from ray.exceptions import ActorUnavailableError
        return ActorUnavailableError

    @property
    def GetTimeoutError(self):  # noqa: N802
        from ray.exceptions import GetTimeoutError
        return GetTimeoutError

    def get(self, refs, timeout=None):
        import ray
        return ray.get(refs, timeout=timeout)

    def wait(self, refs, num_returns=1, timeout=None):
        import ray
        return ray.wait(list(refs), num_returns=num_returns, timeout=timeout)

    def kill(self, actor, no_restart=True):
        import ray
        ray.kill(actor, no_restart=no_restart)

    def sigkill(self, actor, where):
        import os
        import signal

        import ray
        if where.get("node_id") == ray.get_runtime_context().get_node_id():
            os.kill(int(where["pid"]), signal.SIGKILL)  # the pid its own process just reported
        else:  # another node's process: Ray's kill ends it at once too, with no cleanup
            ray.kill(actor, no_restart=False)

    def spawn(self, cls, args=(), kwargs=None, options=None):
        import ray
        if cls not in _ACTOR_CLASSES:
            _ACTOR_CLASSES[cls] = ray.remote(cls)
        return _ACTOR_CLASSES[cls].options(**(options or {})).remote(*args, **(kwargs or {}))

    def put(self, value):
        import ray
        return ray.put(value)

    def nodes(self):
        import ray
        return ray.nodes()

    def start(self, dashboard=True):
        """Start (or join) Ray once per process. With ``RAY_ADDRESS`` set (a job submitted to a cluster) it
        joins that cluster; otherwise it starts a fresh local instance (``address="local"``), never
        attaching by accident to another cluster on the same machine."""
        import os

        import ray
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

    def __repr__(self) -> str:
        return "RayRuntime()"

    def __eq__(self, other) -> bool:  # every instance is the same runtime (a frozen spec compares by it)
        return isinstance(other, RayRuntime)

    def __hash__(self) -> int:
        return hash(RayRuntime)


#: The default everywhere a runtime is taken.
RAY = RayRuntime()
