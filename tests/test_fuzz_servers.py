"""Property-based fuzzing of both servers, the gRPC one and the same-node one, in front of a real shard.

    RAYPS_FUZZ_EXAMPLES  how many random programs each test runs (default 25, the CI budget: a few
                         seconds). A longer hunt:
                         RAYPS_FUZZ_EXAMPLES=2000 python3 -m pytest -q tests/test_fuzz_servers.py

Hypothesis writes programs of up to 20 requests from workers 0..2: valid pushes at the right clock and
seq, retries of earlier ones, pushes that claim a future clock, seq or version, headers that cannot be
true (clock 0, an infinite loss, ahead past the limit, an incarnation that never joined), malformed
chunks and requests, wrong tokens, clock advances, leaves, pulls and registrations. Each request goes
over a real gRPC server on 127.0.0.1 (``ParameterServerStub``, the proto alone) or a real shm server
(its wire spoken by hand, tests/shm_fixtures.py), both serving one ``ParameterShard`` on one event loop,
as a shard actor serves them (ps/served.py). ``Model`` is the protocol as protos/ps.proto states it: it
predicts every answer. After every request:

- the server answered within a short deadline, exactly as the model says: the outcome, or the status
  the proto names, the refusal counted under its reason (never UNKNOWN or INTERNAL, never a hang);
- the parameters are the initial ones minus exactly the accepted pushes' updates (plain SGD, lr 1,
  small integer gradients: exact in float32), and the version counts those updates;
- every accepted (worker, incarnation, seq) was applied once, in order (the shard's audit log);
- Stats answers over gRPC, and every counter in it is the model's.

One test runs asp (every push applied at once, over all three ways in: Push, Step and the shm socket);
one runs bsp (rounds gathered from every live worker and stepped with their sample-weighted mean, over
Push only: a Step would wait for its round).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace

import grpc
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from rayps.protos import ps_pb2, ps_pb2_grpc
from rayps.protos.shm_wire import BUFFERS_FOLLOW, FINISH, PUSH_PULL, REGISTER
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import MAX_AHEAD, MAX_CLOCK
from rayps.ps.shard import ParameterShard
from rayps.ps.transport.grpc_server import start_grpc_server
from tests.grpc_fixtures import AUTH, PUSH, TOKEN, LoopThread
from tests.shm_fixtures import serve_shm, stop_shm

pytest_plugins = ["tests.grpc_fixtures"]  # its loop_thread fixture

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("RAYPS_FUZZ_EXAMPLES", "25"))
TALLY: dict[str, Counter] = {"asp": Counter(), "bsp": Counter()}  # what a run did, printed at its end (-s)
FUZZ = settings(max_examples=EXAMPLES, stateful_step_count=20, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])

SIZE = 6
CHUNK_VALUES = 2  # a gradient or an answer crosses gRPC in 3 chunks
WORKERS = (0, 1, 2)
INIT = np.arange(SIZE, dtype=np.float32)
U64, U32 = 2 ** 64 - 1, 2 ** 32 - 1
DEADLINE = 3.0  # every call's: an answer that never comes fails the test, it does not hang it
WRONG = (("authorization", "Bearer not-the-token"),)


# ---- what the protocol says ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """A push's header and gradient, as sent."""

    worker: int
    clock: int
    grad: tuple  # small integers: every update is exact in float32
    seq: int = 0  # 0: the clock's place in the incarnation
    pulled: int = 0
    samples: int = 1
    loss: float = 0.0
    ahead: int = 0
    incarnation: int = 0


@dataclass
class Model:
    """One shard (workers 0..2 from clock 0, SGD lr 1) as protos/ps.proto describes it: what it answers each
    request with, and what each request changes."""

    mode: str
    params: np.ndarray = field(default_factory=lambda: INIT.copy())
    version: int = 0
    completed: dict = field(default_factory=lambda: {w: 0 for w in WORKERS})
    last: dict = field(default_factory=lambda: {w: 0 for w in WORKERS})
    live: set = field(default_factory=lambda: set(WORKERS))
    high: int = 0  # the highest clock any push completed
    round_clock: int = 1  # bsp: the round being gathered, and what each worker pushed for it
    round: dict = field(default_factory=dict)
    accepted: list = field(default_factory=list)  # every push accepted, for retries
    audit: list = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0
    applied: int = 0
    samples: Counter = field(default_factory=Counter)
    steps: Counter = field(default_factory=Counter)
    loss: dict = field(default_factory=dict)
    staleness: Counter = field(default_factory=Counter)
    max_lead: int = 0

    # ---- questions

    def clock(self, worker: int) -> int:
        return self.completed[worker] if worker in self.live else 0

    def reach(self, worker: int) -> int:
        """The completed clock a pull's horizon counts from (for a worker that left: the table's furthest)."""
        if worker in self.live:
            return self.completed[worker]
        return max([self.high, *(self.completed[w] for w in self.live)])

    def next_push(self, worker: int, **fields) -> Push:
        """The worker's valid next push: the next clock and seq (seq 0 where the clock's place is that seq)."""
        clock, seq, headerless = self.completed[worker] + 1, self.last[worker] + 1, fields.pop("headerless", False)
        return Push(worker, clock, seq=0 if headerless and clock == seq else seq, **fields)

    # ---- answers: (status, outcome) with the model moved as the shard moves

    def refuse(self, status: str, reason: str) -> tuple[str, None]:
        self.rejected[reason] += 1
        return status, None

    def push(self, p: Push, via: str) -> tuple[str, str | None]:
        """A push over ``via`` ("push": gRPC Push; "step": gRPC Step; "shm": the socket's PUSH_PULL)."""
        answers = via != "push"
        if answers and p.ahead > MAX_AHEAD or not answers and p.ahead:
            return self.refuse("INVALID_ARGUMENT", "ahead")
        if not all(math.isfinite(g) for g in p.grad):
            return self.refuse("INVALID_ARGUMENT", "non_finite")
        if p.clock < 1:
            return self.refuse("INVALID_ARGUMENT", "clock")
        if math.isinf(p.loss):
            return self.refuse("INVALID_ARGUMENT", "loss")
        w = p.worker
        if w not in self.live or p.clock > self.completed[w] + 1 or p.incarnation != 0:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        seq = p.seq or p.clock  # every incarnation here joined at clock 0
        if seq <= self.last[w]:
            self.duplicates += 1
            outcome = "duplicate"
        elif seq != self.last[w] + 1 or p.clock != self.completed[w] + 1:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        elif p.pulled > self.version:
            return self.refuse("INVALID_ARGUMENT", "future_version")
        elif self.mode == "bsp" and p.clock > self.round_clock:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        else:
            outcome = self._accept(p, seq)
        if answers and self.pull(w, p.clock + 1 + p.ahead)[0] != "OK":  # the answer's pull, after the push
            return "FAILED_PRECONDITION", None
        return "OK", outcome

    def _accept(self, p: Push, seq: int) -> str:
        w = p.worker
        self.completed[w], self.last[w], self.high = p.clock, seq, max(self.high, p.clock)
        self.audit.append((w, 0, seq))
        self.accepted.append(p)
        self.samples[w] += p.samples
        self.steps[w] += 1
        if not math.isnan(p.loss):  # NaN: the worker's loop reported no loss
            self.loss[w] = p.loss
        grad = np.array(p.grad, np.float32)
        if self.mode == "asp":
            self._step(grad, [self.version - p.pulled])
        else:
            self.round[w] = (grad, p.samples, p.pulled)
            self._step_round()
        return "applied"

    def _step(self, grad: np.ndarray, staleness: list[int]) -> None:
        self.params += np.multiply(grad, -1.0)  # SGD, lr 1, as ps/core/optimizers.py computes it
        self.version += 1
        self.applied += len(staleness)
        self.staleness.update(staleness)

    def _step_round(self) -> None:
        """bsp: once every live worker pushed the round, one step with the pushes' sample-weighted mean."""
        if not self.round or not self.live <= set(self.round):
            return
        pending = [self.round[w] for w in sorted(self.round)]
        if len(pending) == 1:
            mean = pending[0][0]
        else:
            total = sum(n for _, n, _ in pending)
            mean = np.zeros(SIZE, np.float32)
            for grad, n, _ in pending:
                mean += grad * np.float32(n / total if total else 1 / len(pending))
        self._step(mean, [self.version - pulled for _, _, pulled in pending])
        self.round, self.round_clock = {}, self.round_clock + 1

    def pull(self, worker: int, clock: int) -> tuple[str, None]:
        if clock > self.reach(worker) + 1 + MAX_AHEAD:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        if clock > 0 and worker in self.live and self.live:
            self.max_lead = max(self.max_lead, clock - (min(self.completed[w] for w in self.live) + 1))
        return "OK", None

    def register(self, worker: int, incarnation: int, pulls: bool) -> tuple[str, tuple | None]:
        """Register (gRPC: no pull; shm: with the pull of the worker's next iteration): where it carries on."""
        if incarnation != 0:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        if pulls:
            self.pull(worker, self.clock(worker) + 1)
        return "OK", (self.clock(worker), self.last[worker])

    def advance(self, worker: int, clock: int, incarnation: int) -> tuple[str, None]:
        if not 1 <= clock <= MAX_CLOCK:
            return self.refuse("INVALID_ARGUMENT", "clock")
        if worker not in self.live or incarnation != 0:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        if self.mode == "bsp" and clock >= self.round_clock:
            return self.refuse("FAILED_PRECONDITION", "out_of_order")
        self.completed[worker] = max(self.completed[worker], clock)
        return "OK", None

    def leave(self, worker: int, incarnation: int) -> tuple[str, None]:
        if incarnation == 0:  # another incarnation's goodbye is ignored
            self.live.discard(worker)
            if self.mode == "bsp":
                self._step_round()
        return "OK", None


# ---- speaking the wires --------------------------------------------------------------------------------


def chunks(p: Push) -> list[ps_pb2.TensorChunk]:
    """A push as TensorChunks: the header on the first, ``last`` on the final one."""
    data = np.asarray(p.grad, "<f4")
    header = dict(worker_id=p.worker, clock=p.clock, seq=p.seq, pulled_version=p.pulled, num_samples=p.samples,
                  loss=p.loss, ahead=p.ahead, incarnation=p.incarnation)
    return [ps_pb2.TensorChunk(name="dense", dtype="float32", shape=[SIZE], offset=lo,
                               data=data[lo:lo + CHUNK_VALUES].tobytes(), last=lo + CHUNK_VALUES >= SIZE,
                               **(header if lo == 0 else {}))
            for lo in range(0, SIZE, CHUNK_VALUES)]


def answered(call) -> tuple[str, object]:
    """(status name, the reply or the details) of a gRPC call."""
    try:
        return "OK", call()
    except grpc.RpcError as e:
        return e.code().name, e.details()


def _reshaped(cs: list) -> list:
    del cs[0].shape[:]
    cs[0].shape.extend([SIZE + 1])
    return cs


def _changed(cs: list, index: int, **fields) -> list:
    for key, value in fields.items():
        setattr(cs[index], key, value)
    return cs


# Malformed pushes over gRPC: name -> (the chunks from a valid push's, status, reason). None: raw garbage bytes.
GRPC_GARBAGE = {
    "float64": (lambda cs: _changed(cs, 0, dtype="float64"), "INVALID_ARGUMENT", "dtype"),
    "shape": (_reshaped, "INVALID_ARGUMENT", "shape"),
    "offset": (lambda cs: _changed(cs, 1, offset=3), "INVALID_ARGUMENT", "offset"),
    "cut_off": (lambda cs: cs[:2], "INVALID_ARGUMENT", "malformed"),
    "no_last": (lambda cs: _changed(cs, 2, last=False), "INVALID_ARGUMENT", "malformed"),
    "after_last": (lambda cs: cs + cs[-1:], "INVALID_ARGUMENT", "malformed"),
    "unknown_tensor": (lambda cs: _changed(cs, 0, name="sparse"), "NOT_FOUND", "unknown_tensor"),
    "unknown_worker": (lambda cs: _changed(cs, 0, worker_id=7), "NOT_FOUND", "unknown_worker"),
    "empty": (lambda cs: [], "INVALID_ARGUMENT", "malformed"),
    "bytes": (None, "INVALID_ARGUMENT", "malformed"),
}
# Malformed requests on the shm socket: name -> (REQUEST fields, status, reason)
SHM_GARBAGE = {
    "unknown_flags": (dict(op=PUSH_PULL, flags=0x40), "INVALID_ARGUMENT", "flags"),
    "buffers_follow": (dict(op=PUSH_PULL, flags=BUFFERS_FOLLOW), "NOT_FOUND", "unknown_tensor"),
    "unknown_op": (dict(op=0), "INVALID_ARGUMENT", "malformed"),
    "another_worker": (dict(op=PUSH_PULL, other=True), "NOT_FOUND", "unknown_worker"),
}

grads = st.tuples(*[st.integers(-3, 3).map(float)] * SIZE)
workers = st.sampled_from(WORKERS)
incarnations = st.one_of(st.just(0), st.just(0), st.integers(1, U32))
losses = st.one_of(st.floats(-1e6, 1e6, width=32), st.just(math.nan))
samples = st.sampled_from([0, 0, 1, 3, 8, U32])  # 0 often: a bsp round may be all of them


class ServersMachine(RuleBasedStateMachine):
    """One shard behind both servers; every rule one request, every answer the model's."""

    loop: LoopThread
    mode = "asp"
    ways_in = ("push", "step", "shm")

    def __init__(self):
        super().__init__()
        self.model = Model(self.mode)
        self.shard = ParameterShard(0, INIT, list(WORKERS), OptimizerConfig(name="sgd", lr=1.0), ScheduleConfig(),
                                    ConsistencyConfig(mode=self.mode), audit=True)
        self.grpc = self.loop.run(start_grpc_server(self.shard, TOKEN, "127.0.0.1", 0, chunk_bytes=CHUNK_VALUES * 4))
        self.channel = grpc.insecure_channel(self.grpc.address)
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)
        self.shm = serve_shm(self.loop, self.shard, TOKEN, None)
        self.wires = {}

    def teardown(self):
        m, seen = self.model, TALLY[self.mode]
        seen.update(programs=1, applied=m.applied, duplicates=m.duplicates, refused=sum(m.rejected.values()))
        for wire in self.wires.values():
            wire.close()
        self.channel.close()
        self.loop.run(self.grpc.stop(0))
        stop_shm(self.loop, self.shm)

    def wire(self, worker: int):
        if worker not in self.wires:
            self.wires[worker] = self.shm.connect(worker)
        return self.wires[worker]

    # ---- sending, and checking the answer against the model

    def send(self, p: Push, via: str) -> None:
        expected = self.model.push(p, via)
        if via == "shm":
            reply = self.wire(p.worker).push(np.array(p.grad, np.float32), p.clock, pulled=p.pulled,
                                             samples=p.samples, loss=p.loss, ahead=p.ahead,
                                             incarnation=p.incarnation, seq=p.seq)
            got = (reply.status, ("applied", "duplicate", "stale")[reply.outcome] if reply.status == "OK" else None)
            detail, version = reply.message, reply.version
        elif via == "step":
            status, reply = answered(lambda: list(self.stub.Step(iter(chunks(p)), timeout=DEADLINE, metadata=AUTH)))
            outcome = ps_pb2.PushReply.Outcome.Name(reply[0].push.outcome).lower() if status == "OK" else None
            got, detail, version = (status, outcome), reply, reply[0].push.version if status == "OK" else None
        else:
            status, reply = answered(lambda: self.stub.Push(iter(chunks(p)), timeout=DEADLINE, metadata=AUTH))
            outcome = ps_pb2.PushReply.Outcome.Name(reply.outcome).lower() if status == "OK" else None
            got, detail, version = (status, outcome), reply, reply.version if status == "OK" else None
        assert got == expected, f"{p} over {via}: {detail}"
        if got[0] == "OK":
            assert version == self.model.version

    # ---- the requests

    @rule(worker=workers, via=st.sampled_from(["push", "step", "shm"]), grad=grads, loss=losses, samples=samples,
          headerless=st.booleans(), data=st.data())
    def valid_push(self, worker, via, grad, loss, samples, headerless, data):
        via = via if via in self.ways_in else "push"
        ahead = data.draw(st.integers(0, MAX_AHEAD)) if via != "push" else 0
        pulled = data.draw(st.integers(0, self.model.version))
        self.send(self.model.next_push(worker, grad=grad, loss=loss, samples=samples, pulled=pulled, ahead=ahead,
                                       headerless=headerless), via)

    @rule(grads=st.lists(grads, min_size=len(WORKERS), max_size=len(WORKERS)),
          counts=st.lists(samples, min_size=len(WORKERS), max_size=len(WORKERS)))
    def a_round(self, grads, counts):
        """Every live worker pushes its next iteration, in worker order, over gRPC Push: a round of a job."""
        for worker in sorted(self.model.live):
            self.send(self.model.next_push(worker, grad=grads[worker], samples=counts[worker],
                                           pulled=self.model.version), "push")

    @precondition(lambda self: self.model.accepted)
    @rule(data=st.data(), via=st.sampled_from(["push", "step", "shm"]))
    def retry(self, data, via):
        """A retry of an applied push, unchanged: DUPLICATE (refused only once its worker has left)."""
        via = via if via in self.ways_in else "push"
        p = data.draw(st.sampled_from(self.model.accepted))
        self.send(replace(p, ahead=0) if via == "push" else p, via)  # a Push carries no ahead

    @rule(worker=workers, via=st.sampled_from(["push", "step", "shm"]), grad=grads,
          claim=st.sampled_from(["clock", "seq", "version", "clock_zero", "loss", "nan", "incarnation", "ahead"]),
          data=st.data())
    def impossible_push(self, worker, via, grad, claim, data):
        """A push whose header claims the future, overflows, or cannot be true, one field at a time."""
        via = via if via in self.ways_in else "push"
        p = self.model.next_push(worker, grad=grad, pulled=data.draw(st.integers(0, self.model.version)))
        if claim == "clock":
            p = replace(p, clock=p.clock + data.draw(st.integers(1, 2 ** 62)))
        elif claim == "seq":
            p = replace(p, seq=data.draw(st.integers(p.seq + 1, U64)))
        elif claim == "version":
            p = replace(p, pulled=data.draw(st.integers(self.model.version + 1, U64)))
        elif claim == "clock_zero":
            p = replace(p, clock=0, seq=data.draw(st.sampled_from([0, p.seq])))
        elif claim == "loss":
            p = replace(p, loss=data.draw(st.sampled_from([math.inf, -math.inf])))
        elif claim == "nan":
            p = replace(p, grad=(math.nan,) + p.grad[1:])
        elif claim == "incarnation":
            p = replace(p, incarnation=data.draw(st.integers(1, U32)))
        else:
            p = replace(p, ahead=data.draw(st.integers(MAX_AHEAD + 1 if via != "push" else 1, U32)))
        self.send(p, via)

    @rule(worker=workers, kind=st.sampled_from(sorted(GRPC_GARBAGE)), step=st.booleans())
    def malformed_chunks(self, worker, kind, step):
        make, status, reason = GRPC_GARBAGE[kind]
        step = step and "step" in self.ways_in and kind not in ("after_last", "empty")  # Push's own rules
        expected = self.model.refuse(status, reason)
        if make is None:
            call = self.channel.stream_stream if step else self.channel.stream_unary
            method = PUSH.replace("Push", "Step") if step else PUSH
            send = call(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            got, detail = answered(lambda: send(iter([b"\xff" * 16]), timeout=DEADLINE, metadata=AUTH))
            if step and got == "OK":
                got, detail = answered(lambda: list(detail))
        else:
            requests = make(chunks(self.model.next_push(worker, grad=(1.0,) * SIZE)))
            if step:
                got, detail = answered(lambda: list(self.stub.Step(iter(requests), timeout=DEADLINE, metadata=AUTH)))
            else:
                got, detail = answered(lambda: self.stub.Push(iter(requests), timeout=DEADLINE, metadata=AUTH))
        assert (got, None) == expected, f"{kind}: {detail}"

    @precondition(lambda self: "shm" in self.ways_in)
    @rule(worker=workers, kind=st.sampled_from(sorted(SHM_GARBAGE)), op=st.sampled_from([0, 6, 7, 255]))
    def malformed_request(self, worker, kind, op):
        fields, status, reason = SHM_GARBAGE[kind]
        fields = dict(fields)
        if fields.pop("other", False):
            fields["worker_id"] = (worker + 1) % len(WORKERS)
        if fields["op"] == 0:
            fields["op"] = op
        expected = self.model.refuse(status, reason)
        reply = self.wire(worker).call(fields.pop("op"), clock=self.model.completed[worker] + 1, **fields)
        assert (reply.status, None) == expected, f"{kind}: {reply.message}"

    @rule(worker=workers, via=st.sampled_from(["push", "stats", "shm"]))
    def wrong_token(self, worker, via):
        expected = self.model.refuse("UNAUTHENTICATED", "unauthenticated")
        if via == "shm" and "shm" in self.ways_in:
            wire = self.shm.connect(worker, token="not-the-token")
            got = wire.refused.status
            wire.close()
        elif via == "stats":
            got, _ = answered(lambda: self.stub.Stats(ps_pb2.StatsRequest(), timeout=DEADLINE, metadata=WRONG))
        else:
            requests = chunks(self.model.next_push(worker, grad=(1.0,) * SIZE))
            got, _ = answered(lambda: self.stub.Push(iter(requests), timeout=DEADLINE, metadata=WRONG))
        assert (got, None) == expected

    @rule(worker=workers, incarnation=incarnations, data=st.data())
    def advance(self, worker, incarnation, data):
        at = self.model.completed[worker]
        clock = data.draw(st.one_of(st.sampled_from([0, max(1, at - 1), at + 1, at + 3, MAX_CLOCK, MAX_CLOCK + 1, U64]),
                                    st.integers(0, U64)))
        expected = self.model.advance(worker, clock, incarnation)
        got, detail = answered(lambda: self.stub.AdvanceClock(
            ps_pb2.ClockRequest(worker_id=worker, clock=clock, incarnation=incarnation), timeout=DEADLINE,
            metadata=AUTH))
        assert (got, None) == expected, f"advance worker {worker} to {clock} (incarnation {incarnation}): {detail}"

    @rule(worker=workers, incarnation=incarnations, via=st.sampled_from(["grpc", "shm"]))
    def leave(self, worker, incarnation, via):
        expected = self.model.leave(worker, incarnation)
        if via == "shm" and "shm" in self.ways_in:
            reply = self.wire(worker).call(FINISH, incarnation=incarnation)
            got, detail = reply.status, reply.message
        else:
            got, detail = answered(lambda: self.stub.AdvanceClock(
                ps_pb2.ClockRequest(worker_id=worker, leave=True, incarnation=incarnation), timeout=DEADLINE,
                metadata=AUTH))
        assert (got, None) == expected, detail

    @rule(worker=workers, data=st.data())
    def pull(self, worker, data):
        horizon = self.model.reach(worker) + 1 + MAX_AHEAD
        if self.mode == "bsp":  # a bsp pull for a round not yet stepped would wait for it: only those that do not
            clocks = [0, min(self.model.round_clock, horizon), horizon + 1, U64]
        else:
            clocks = [0, horizon, horizon + 1, U64, data.draw(st.integers(0, U64))]
        clock = min(data.draw(st.sampled_from(clocks)), U64)
        expected = self.model.pull(worker, clock)
        got, detail = answered(lambda: list(self.stub.Pull(ps_pb2.PullRequest(worker_id=worker, clock=clock),
                                                          timeout=DEADLINE, metadata=AUTH)))
        assert (got, None) == expected, f"pull of worker {worker} for iteration {clock}: {detail}"
        if got == "OK":
            assert detail[0].version == self.model.version
            sent = np.concatenate([np.frombuffer(c.data, "<f4") for c in detail])
            np.testing.assert_array_equal(sent, self.model.params)

    @rule(worker=workers, incarnation=incarnations, via=st.sampled_from(["grpc", "shm"]))
    def register(self, worker, incarnation, via):
        # shm's REGISTER pulls the next iteration too, which under bsp may wait for its round
        shm = via == "shm" and "shm" in self.ways_in
        status, position = self.model.register(worker, incarnation, pulls=shm)
        if shm:
            reply = self.wire(worker).call(REGISTER, incarnation=incarnation)
            got, detail = (reply.status, (reply.clock, reply.seq) if reply.status == "OK" else None), reply.message
        else:
            got, reply = answered(lambda: self.stub.Register(
                ps_pb2.RegisterRequest(worker_id=worker, incarnation=incarnation), timeout=DEADLINE, metadata=AUTH))
            got, detail = (got, (reply.clock, reply.seq) if got == "OK" else None), reply
        assert got == (status, position), detail

    # ---- after every request

    @invariant()
    def the_shard_is_the_models(self):
        m = self.model
        TALLY[self.mode]["checks"] += 1
        status, reply = answered(lambda: self.stub.Stats(ps_pb2.StatsRequest(), timeout=DEADLINE, metadata=AUTH))
        assert status == "OK", reply
        stats = msgpack.unpackb(reply.msgpack, strict_map_key=False)
        assert stats["version"] == m.version and stats["rejected"] == dict(m.rejected)
        assert (stats["pushes_applied"], stats["duplicates"]) == (m.applied, m.duplicates)
        assert stats["clocks"] == {w: m.completed[w] for w in sorted(m.live)}
        assert stats["ledger"] == {w: [0, m.last[w]] for w in WORKERS}
        assert (stats["samples"], stats["steps"]) == (dict(m.samples), dict(m.steps))
        assert stats["loss"] == m.loss
        assert stats["staleness_histogram"] == dict(m.staleness) and stats["max_clock_gap"] == m.max_lead
        params, version, _ = self.loop.run(self.shard.pull())
        assert version == m.version
        np.testing.assert_array_equal(params, m.params)
        assert self.shard.applied_log() == m.audit  # each accepted (worker, incarnation, seq) once, in order


class BspMachine(ServersMachine):
    mode = "bsp"
    ways_in = ("push",)  # a Step, or the socket's PUSH_PULL, answers only once the round steps


@pytest.mark.parametrize("machine", [ServersMachine, BspMachine], ids=["asp", "bsp"])
def test_whatever_clients_send_both_servers_answer_as_the_protocol_says(machine, loop_thread):
    TALLY[machine.mode].clear()
    run_state_machine_as_test(type(machine.__name__, (machine,), {"loop": loop_thread}), settings=FUZZ)
    t = TALLY[machine.mode]
    assert t["programs"] >= 1 and t["checks"] >= t["programs"]
    print(f"\nfuzz {machine.mode}: {t['programs']} programs, {t['checks']} checks after a request or at the start;"
          f" {t['applied']} pushes applied, {t['duplicates']} duplicates, {t['refused']} refused")
