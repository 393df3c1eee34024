"""The in-process runtime behaves as Ray does where the controller's tests rely on it (tests/local_runtime.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from rayps.ps.core.placement_info import this_pid
from tests.local_runtime import Killed, LocalRuntime

pytestmark = pytest.mark.timeout(30)


class Counter:
    """An async actor, as a shard is."""

    def __init__(self, start: int):
        self.value = start

    async def add(self, n: int, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        self.value += n
        return self.value

    def pid(self) -> int:
        return this_pid()


class Caller:
    """A sync actor with two threads, as a worker is: one loops calling another actor, one answers."""

    def __init__(self, other):
        self.other = other
        self.calls = 0
        self.ended: list[str] = []

    def keep_calling(self, runtime) -> None:
        try:
            while True:
                try:
                    runtime.get(self.other.add.remote(1))
                    self.calls += 1
                except Exception:  # noqa: BLE001 - a retry loop that swallows every ordinary error
                    time.sleep(0.01)
        except BaseException as e:
            self.ended.append(type(e).__name__)
            raise

    def count(self) -> int:
        return self.calls

    def keep(self, a: np.ndarray) -> np.ndarray:
        a[0] = 7
        return a


@pytest.fixture
def runtime():
    runtime = LocalRuntime(restart_s=0.1)
    yield runtime
    runtime.shutdown()


def test_an_async_actor_interleaves_its_calls_and_what_crosses_is_a_copy(runtime):
    counter = runtime.actor(Counter, 10)
    # an async actor interleaves its calls: the second ran while the first waited, as a shard's pushes do
    assert runtime.get([counter.add.remote(1, 0.05), counter.add.remote(2)]) == [13, 12]
    caller = runtime.actor(Caller, counter)
    sent = np.zeros(3)
    back = runtime.get(caller.keep.remote(sent))
    assert sent[0] == 0 and back[0] == 7  # the actor changed its own copy; the answer is another


def test_a_get_that_runs_out_of_time_raises_the_runtimes_timeout(runtime):
    counter = runtime.actor(Counter, 0)
    with pytest.raises(runtime.GetTimeoutError):
        runtime.get(counter.add.remote(1, 1.0), timeout=0.05)
    ready, pending = runtime.wait([counter.add.remote(1), counter.add.remote(1, 1.0)], num_returns=2, timeout=0.1)
    assert len(ready) == 1 and len(pending) == 1


def test_a_killed_actor_fails_its_calls_for_good_and_its_own_thread_ends_at_its_next_call(runtime):
    counter = runtime.actor(Counter, 0)
    caller = runtime.actor(Caller, counter, max_concurrency=2)
    loop = caller.keep_calling.remote(runtime)
    while runtime.get(caller.count.remote()) < 5:
        time.sleep(0.01)
    slow = counter.add.remote(1, 5.0)
    runtime.kill(caller)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(loop)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(caller.count.remote())
    runtime.kill(counter)
    with pytest.raises(runtime.ActorDiedError):  # a call pending when its actor died fails too
        runtime.get(slow)
    threads = [t for t in threading.enumerate() if t.name.startswith("Caller-")]
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)  # Killed went through the loop's `except Exception`


def test_a_crashed_actor_is_unavailable_then_comes_back_from_its_arguments_as_a_new_pid(runtime):
    counter = runtime.actor(Counter, 10, max_restarts=1)
    first = runtime.get(counter.pid.remote())
    runtime.get(counter.add.remote(5))
    runtime.kill(counter, no_restart=False)
    with pytest.raises(runtime.ActorUnavailableError):
        runtime.get(counter.add.remote(1))
    deadline = time.monotonic() + 5
    while True:
        try:
            pid = runtime.get(counter.pid.remote())
            break
        except runtime.ActorUnavailableError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert pid != first and runtime.pids(counter) == [first, pid]
    assert runtime.get(counter.add.remote(0)) == 10  # built again from its arguments, not what it held
    runtime.kill(counter, no_restart=False)  # its one restart is spent: dead for good
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(counter.add.remote(1))


def test_a_killed_callers_own_call_raises_killed_which_no_except_exception_catches(runtime):
    counter = runtime.actor(Counter, 0)
    caller = runtime.actor(Caller, counter, max_concurrency=2)
    caller.keep_calling.remote(runtime)
    while runtime.get(caller.count.remote()) < 1:
        time.sleep(0.01)
    runtime.kill(caller)
    deadline = time.monotonic() + 5
    life = runtime._actors[caller._aid].lives[0]
    while life.instance.ended != ["Killed"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert issubclass(Killed, BaseException) and not issubclass(Killed, Exception)
