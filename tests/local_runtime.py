"""An in-process runtime: Ray's actor model on threads, so the controller's logic is tested in one process.

``LocalRuntime`` is a ``Runtime`` (runtime.py): ``get``, ``wait``, ``kill``,
``spawn`` and the failures it tells apart, so the driver itself
(``run_job(..., runtime=LocalRuntime())``) runs a whole job on it. ``runtime.actor(cls, *args, **kwargs)``
makes a plain class an actor, as ``ray.remote(cls).remote(...)`` does, and
the handle it returns is called in Ray's style: ``handle.method.remote(...)``
gives a reference to ``get`` or ``wait`` on. What the tests rely on is what
Ray does:

- Each actor runs on threads of its own. A class with any ``async def``
  method is an async actor: every call runs on its own event loop, in the
  order the calls were made (a sync method blocks the loop, as in Ray).
  Otherwise up to ``max_concurrency`` calls run at once on its threads.
- A call's arguments are pickled when it is made and its answer when it is
  given, so a caller may overwrite a buffer it sent, and nobody shares an
  object with an actor (handles and the runtime pickle by reference).
- ``kill(actor)`` ends the actor for good: its calls, pending ones too, fail
  with ``ActorDiedError``, and the threads of its life are dead: any call
  one makes through the runtime (a killed worker still in its loop) raises
  ``Killed``, a BaseException that no retry can swallow, and the thread ends
  there as the process would have; ``die_here()`` is an actor killing its
  own process at a chosen point. ``kill(actor, no_restart=False)`` is a
  crash Ray restarts (up to ``max_restarts``): for ``restart_s`` calls fail
  with ``ActorUnavailableError``, then a new object is built from the same
  arguments (a ServedShard restores the newest checkpoint by itself) and
  reports a new pid (``act_as``, ps/core/placement_info.py).

``shutdown()`` kills every actor. A thread blocked for good in the actor's
own code (a chaos hang) cannot be ended from outside: it sleeps on, a daemon
thread, as the hung process would have until its SIGKILL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import inspect
import itertools
import os
import pickle
import queue
import threading
import time

from ray import cloudpickle  # what Ray serializes calls with: closures and local functions travel

from rayps.ps.core.placement_info import act_as


class ActorError(Exception):
    """An actor's process is gone (Ray's RayActorError)."""


class ActorDiedError(ActorError):
    """... for good: killed, or its restarts are spent."""


class ActorUnavailableError(ActorError):
    """... for now: it is being restarted."""


class GetTimeoutError(TimeoutError):
    """``get`` ran out of time."""


class Killed(BaseException):
    """Raised in a killed actor's own threads at their next call through the runtime: the thread ends."""


_RUNTIMES: dict[int, "LocalRuntime"] = {}  # pickled handles and runtimes find theirs here
_next_runtime = itertools.count(1)
_next_pid = itertools.count(50_001)  # an in-process life's pid: never this process's own
_here = threading.local()  # the life whose thread this is (unset on the test's own threads)


def this_node_id() -> str:
    """The node every in-process actor stands on: this process's own, as a client on the test's thread
    would name it (Ray's node id once the shared instance runs, else "local")."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _runtime(rid: int) -> "LocalRuntime":
    return _RUNTIMES[rid]


def _handle(rid: int, aid: int) -> "ActorHandle":
    return _RUNTIMES[rid]._actors[aid].handle


def _copy(value):
    """What crosses between actors is a copy, as Ray's serialization makes it."""
    return pickle.loads(cloudpickle.dumps(value))


def _copy_error(error: BaseException) -> BaseException:
    try:
        return _copy(error)
    except Exception:  # noqa: BLE001 - an exception that does not pickle still reaches the caller
        return error


class LocalRef:
    """A call's reference; ``get`` and ``wait`` read it."""

    def __init__(self, future: cf.Future, what: str):
        self.future = future
        self.what = what

    def __repr__(self) -> str:
        return f"LocalRef({self.what})"


class ActorHandle:
    def __init__(self, runtime: "LocalRuntime", aid: int, name: str):
        self._runtime, self._aid, self._name = runtime, aid, name

    def __getattr__(self, method: str) -> "_Method":
        if method.startswith("__") and method != "__ray_ready__":
            raise AttributeError(method)
        return _Method(self, method)

    def __reduce__(self):
        return _handle, (self._runtime.rid, self._aid)

    def __repr__(self) -> str:
        return f"ActorHandle({self._name})"


class _Method:
    def __init__(self, handle: ActorHandle, name: str):
        self.handle, self.name = handle, name

    def remote(self, *args, **kwargs) -> LocalRef:
        return self.handle._runtime._call(self.handle._aid, self.name, args, kwargs)


class _Life:
    """One life of an actor: its object, its threads, its pid; dead once killed."""

    def __init__(self, actor: "_Actor"):
        self.actor = actor
        self.pid = next(_next_pid)
        self.dead = False
        self.death = cf.Future()  # done when killed: wakes its own threads blocked in get or wait
        self.pending: set[cf.Future] = set()
        self.instance = None
        self.ready = cf.Future()  # the constructor's outcome
        node = {"node_id": this_node_id(), "node_ip": "127.0.0.1", "pid": self.pid}
        if actor.is_async:
            self.loop = asyncio.new_event_loop()
            targets = [self._run_loop]
        else:
            self.tasks: queue.SimpleQueue = queue.SimpleQueue()
            targets = [self._serve] * actor.max_concurrency
        self.threads = [threading.Thread(target=t, args=(node,), name=f"{actor.name}-{i}", daemon=True)
                        for i, t in enumerate(targets)]
        for thread in self.threads:
            thread.start()

    def _enter(self, node: dict) -> None:
        _here.life = self
        act_as(node)

    def _serve(self, node: dict) -> None:
        """A sync actor's thread: the calls in the order they were made, until the life ends."""
        self._enter(node)
        while not self.dead:
            task = self.tasks.get()
            if task is None or self.dead:
                return
            task()

    def _run_loop(self, node: dict) -> None:
        """An async actor's thread: its event loop, until the life ends."""
        self._enter(node)
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:  # a dead process resumes nothing: what was waiting is cancelled and dropped
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            self.loop.close()

    def _schedule(self, fn) -> None:
        if self.actor.is_async:
            self.loop.call_soon_threadsafe(fn)
        else:
            self.tasks.put(fn)

    def start(self) -> None:
        """Build the object from the actor's arguments, on its own thread, before any call runs there."""
        def construct():
            try:
                args, kwargs = pickle.loads(self.actor.arguments)
                self.instance = self.actor.cls(*args, **kwargs)
                self.ready.set_result(None)
            except BaseException as e:  # noqa: BLE001 - the actor dies in its creation task, as on Ray
                self.ready.set_exception(e)
        self._schedule(construct)

    def submit(self, name: str, payload: bytes, future: cf.Future) -> None:
        """Run method ``name`` on this life's threads; its answer (a copy) or error settles ``future``."""
        def call():
            try:
                self.ready.result()  # the constructor was scheduled first; with two threads it may still run
            except BaseException as e:  # noqa: BLE001
                raise ActorDiedError(f"{self.actor.name} died in its creation task: {type(e).__name__}: {e}")
            args, kwargs = pickle.loads(payload)
            method = (lambda: True) if name == "__ray_ready__" else getattr(self.instance, name)
            return method(*args, **kwargs)

        def settle(value=None, error: BaseException | None = None) -> None:
            self.pending.discard(future)
            if isinstance(error, (Killed, asyncio.CancelledError)):
                return  # this life was killed under the call: the future failed then
            if error is None:
                try:
                    value = _copy(value)
                except Exception as e:  # noqa: BLE001 - an answer that cannot cross fails the call, as on Ray
                    error = e
            _settle(future, value, None if error is None else _copy_error(error))

        if self.actor.is_async:
            async def run():
                try:
                    value = call()
                    if inspect.isawaitable(value):
                        value = await value
                except BaseException as e:  # noqa: BLE001 - the caller gets what the method raised
                    settle(error=e)
                else:
                    settle(value)
            asyncio.run_coroutine_threadsafe(run(), self.loop)
        else:
            def run():
                try:
                    value = call()
                except BaseException as e:  # noqa: BLE001
                    settle(error=e)
                else:
                    settle(value)
            self.tasks.put(run)

    def end(self, error: BaseException) -> None:
        """Kill this life: its pending calls fail with ``error``; its threads stop at their next call."""
        self.dead = True
        self.death.set_result(None)
        for future in list(self.pending):
            _settle(future, error=error)
        if self.actor.is_async:
            self.loop.call_soon_threadsafe(self.loop.stop)
        else:
            for _ in self.threads:
                self.tasks.put(None)


class _Actor:
    """An actor across its lives: its class and arguments, its restarts, its current life."""

    def __init__(self, aid: int, cls, args, kwargs, name: str, max_restarts: int, max_concurrency: int):
        self.aid, self.cls, self.name = aid, cls, name
        self.arguments = cloudpickle.dumps((args, kwargs))  # kept, to build every life from the same arguments
        self.max_restarts = max_restarts
        self.restarts = 0
        self.max_concurrency = max_concurrency
        self.is_async = any(inspect.iscoroutinefunction(f) for _, f in inspect.getmembers(cls, inspect.isfunction))
        self.life: _Life | None = None
        self.died: ActorDiedError | None = None  # set once dead for good
        self.lives: list[_Life] = []
        self.handle: ActorHandle | None = None


class LocalRuntime:
    ActorError = ActorError
    ActorDiedError = ActorDiedError
    ActorUnavailableError = ActorUnavailableError
    GetTimeoutError = GetTimeoutError

    def __init__(self, restart_s: float = 0.2):
        """``restart_s``: how long a crashed actor with restarts left is unavailable before its new life."""
        self.rid = next(_next_runtime)
        self.restart_s = restart_s
        self._actors: dict[int, _Actor] = {}
        self._lock = threading.RLock()
        _RUNTIMES[self.rid] = self

    def __reduce__(self):
        return _runtime, (self.rid,)

    # ---- actors ---------------------------------------------------------------------

    def actor(self, cls, *args, name: str | None = None, max_restarts: int = 0, max_concurrency: int = 1,
              **kwargs) -> ActorHandle:
        """``cls(*args, **kwargs)`` as an actor; ``max_restarts`` and ``max_concurrency`` as Ray's options."""
        with self._lock:
            aid = len(self._actors)
            actor = _Actor(aid, cls, args, kwargs, name or f"{cls.__name__}-{aid}", max_restarts, max_concurrency)
            actor.handle = ActorHandle(self, aid, actor.name)
            self._actors[aid] = actor
            self._begin_life(actor)
        return actor.handle

    def named(self, name: str) -> ActorHandle:
        """The newest actor spawned under ``name`` (Ray's ``get_actor``)."""
        with self._lock:
            found = [a for a in self._actors.values() if a.name == name]
        if not found:
            raise ValueError(f"no actor named {name!r}")
        return found[-1].handle

    def spawn(self, cls, args: tuple = (), kwargs: dict | None = None, options: dict | None = None) -> ActorHandle:
        """The Runtime protocol's way in (the driver's): Ray's options, of which one process honours the name,
        the restarts and the concurrency; resources, namespaces and scheduling mean nothing on one node."""
        options = options or {}
        return self.actor(cls, *args, name=options.get("name"), max_restarts=options.get("max_restarts", 0),
                          max_concurrency=options.get("max_concurrency", 1), **(kwargs or {}))

    def put(self, value):
        """Every call copies its arguments anyway: the value itself stands for its reference."""
        return value

    def nodes(self) -> list[dict]:
        """One node, as ``ray.nodes()`` would describe this machine (so a job picks the shm transport)."""
        return [{"Alive": True, "NodeID": this_node_id(), "NodeManagerAddress": "127.0.0.1",
                 "Resources": {"CPU": float(os.cpu_count() or 1), "memory": 2.0 ** 33}}]

    def start(self, dashboard: bool = True) -> None:
        """Nothing to start, and no dashboard."""
        return None

    def pids(self, actor: ActorHandle) -> list[int]:
        """The pid of each of the actor's lives so far, the first first."""
        return [life.pid for life in self._actors[actor._aid].lives]

    def _begin_life(self, actor: _Actor) -> None:
        life = _Life(actor)
        actor.lives.append(life)
        life.start()
        actor.life = life

    def _call(self, aid: int, name: str, args: tuple, kwargs: dict) -> LocalRef:
        _check_caller()
        payload = cloudpickle.dumps((args, kwargs))  # now, as Ray serializes a call's arguments when it is made
        future = cf.Future()
        ref = LocalRef(future, f"{self._actors[aid].name}.{name}")
        with self._lock:
            actor = self._actors[aid]
            life = actor.life
            if actor.died is not None:
                future.set_exception(ActorDiedError(str(actor.died)))
            elif life is None:
                future.set_exception(ActorUnavailableError(f"{actor.name} is restarting"))
            else:
                life.pending.add(future)
                life.submit(name, payload, future)
        return ref

    def kill(self, actor: ActorHandle, no_restart: bool = True) -> None:
        """End the actor's current life at once; with ``no_restart=False`` it comes back if it has restarts left."""
        with self._lock:
            a = self._actors[actor._aid]
            life = a.life
            again = not no_restart and (a.max_restarts < 0 or a.restarts < a.max_restarts)
            if life is None:  # already dead, or down for a restart (which this cancels unless again)
                if not again and a.died is None:
                    a.died = ActorDiedError(f"The actor is dead because it was killed: {a.name}")
                return
            a.life = None
            if again:
                a.restarts += 1
                life.end(ActorUnavailableError(f"{a.name} (pid {life.pid}) died; it is being restarted"))
                timer = threading.Timer(self.restart_s, self._restart, (a,))
                timer.daemon = True
                timer.start()
            else:
                a.died = ActorDiedError(f"The actor is dead because it was killed: {a.name} (pid {life.pid})")
                life.end(ActorDiedError(str(a.died)))

    def sigkill(self, actor: ActorHandle, where: dict) -> None:
        """The Runtime protocol's SIGKILL: a crash of the actor's current life, restarted if it has restarts left
        (``where`` names a process of this one, which nothing may signal)."""
        self.kill(actor, no_restart=False)

    def die_here(self) -> None:
        """The calling actor's process dies now, as by a SIGKILL of itself: its life ends, and this thread
        with Killed."""
        life = getattr(_here, "life", None)
        if life is None:
            raise ValueError("die_here() is for an actor's own threads; this one is the test's")
        self.kill(life.actor.handle)
        _check_caller()

    def _restart(self, actor: _Actor) -> None:
        """The crashed actor's next life, from the same arguments; it answers once its constructor ran."""
        with self._lock:
            if actor.died is not None:  # killed for good while it was down
                return
            life = _Life(actor)
            actor.lives.append(life)
            life.start()
        try:
            life.ready.result()
        except BaseException as e:  # noqa: BLE001 - its constructor failed: dead for good
            with self._lock:
                actor.died = ActorDiedError(f"{actor.name} died in its creation task: {type(e).__name__}: {e}")
            life.end(ActorDiedError(str(actor.died)))
            return
        with self._lock:
            if actor.died is None:
                actor.life = life
            else:
                life.end(ActorDiedError(str(actor.died)))

    def shutdown(self) -> None:
        """Kill every actor: what its threads were doing ends at their next call through the runtime."""
        for actor in list(self._actors.values()):
            self.kill(actor.handle)
        _RUNTIMES.pop(self.rid, None)

    # ---- waiting ----------------------------------------------------------------------

    def get(self, refs, timeout: float | None = None):
        many = isinstance(refs, (list, tuple))
        items = list(refs) if many else [refs]
        done = _wait([r.future for r in items], len(items), timeout)
        if len(done) < len(items):
            raise GetTimeoutError(f"get timed out after {timeout} s: {[r for r in items if r.future not in done]}")
        values = [r.future.result() for r in items]
        return values if many else values[0]

    def wait(self, refs, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        refs = list(refs)
        done = _wait([r.future for r in refs], num_returns, timeout)
        ready = [r for r in refs if r.future in done][:num_returns]
        return ready, [r for r in refs if r not in ready]


def _settle(future: cf.Future, value=None, error: BaseException | None = None) -> None:
    """The first outcome wins: a call's answer, or its actor's death, whichever comes first."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except cf.InvalidStateError:
        pass


def _check_caller() -> None:
    life = getattr(_here, "life", None)
    if life is not None and life.dead:
        raise Killed(f"{life.actor.name} (pid {life.pid}) was killed")


def _wait(futures: list[cf.Future], count: int, timeout: float | None) -> set[cf.Future]:
    """The futures done once ``count`` are (or ``timeout`` passed); a killed caller stops waiting with Killed."""
    _check_caller()
    life = getattr(_here, "life", None)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = {f for f in futures if f.done()}
        if len(done) >= min(count, len(futures)):
            return done
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return done
        watch = [f for f in futures if not f.done()] + ([life.death] if life is not None else [])
        cf.wait(watch, timeout=left, return_when=cf.FIRST_COMPLETED)
        _check_caller()


@contextlib.contextmanager
def local_runtime(**kwargs):
    """A ``LocalRuntime`` for a test (or a module's fixture), shut down after it. Torch's thread count is
    given back too: a worker sets it for its whole process, and here that process is the test's own."""
    import torch

    threads = torch.get_num_threads()
    runtime = LocalRuntime(**kwargs)
    try:
        yield runtime
    finally:
        runtime.shutdown()
        torch.set_num_threads(threads)
