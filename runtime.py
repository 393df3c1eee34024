"""How the job's code waits on, and kills, its actors: Ray's calls behind one small interface.

The controller, the checkpointer, the worker's work-queue client and the
object-store transport's client call actors in Ray's handle style
(``actor.method.remote(...)`` gives a reference) and hand the references to
a ``Runtime`` to wait on or read. What they tell apart when an actor fails
is named by the runtime too, so the same code runs on Ray (``RayRuntime``,
the default everywhere) and in one process (tests/local_runtime.py, where
the controller's accounting is tested without a cluster).

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

    def __repr__(self) -> str:
        return "RayRuntime()"

    def __eq__(self, other) -> bool:  # every instance is the same runtime (a frozen spec compares by it)
        return isinstance(other, RayRuntime)

    def __hash__(self) -> int:
        return hash(RayRuntime)


#: The default everywhere a runtime is taken.
RAY = RayRuntime()
