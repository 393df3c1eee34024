"""The worker's side of the gRPC transport: one client, all shards.

The transport contract (ps/transport/contract.py), so a worker does not care
which transport it has. Underneath, each shard gets one
persistent ``Step`` stream for the whole job: per step the gradient slice goes
out in chunks and the next parameters come back in chunks, assembled straight
into the worker's flat parameter buffer. All shards are driven at once from a
private ``grpc.aio`` event loop on a background thread; every call and every
step has a deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import grpc
import msgpack
import numpy as np

from ...protos import ps_pb2, ps_pb2_grpc
from ...protos.codec import (BLOB_DTYPE, BUFFER_DTYPE, CHUNK_BYTES, IDS_DTYPE, WIRE_DTYPE, Assembler, WireError,
                                check_message_size, decode_rows, encode_chunks, parse_chunk)
from .allocator import keep_freed_memory
from ...errors import ShapeError, TransportError
from .grpc_security import TLS, TokenAuth
from ...protos.names import BUFFERS, CHANNEL_OPTIONS, SERVICE, TENSOR
from ..core.partition import ShardRange
from ..core.step import Step
from ...protos.compression import Codec, CodecError
from .client_base import ShardClientBase
from .contract import EncodedRows, Pending

#: A Step stream lives as long as the job; it still has a deadline, as every call does.
STREAM_DEADLINE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class GrpcEndpoints:
    """Where a job's shards listen and how to reach them; what a worker needs to dial."""

    addresses: tuple[str, ...]
    token: str = field(repr=False)  # never in logs or reprs
    tls: TLS | None = None
    timeout_s: float = 300.0
    chunk_bytes: int = CHUNK_BYTES

    ranges: tuple[ShardRange, ...] = ()
    buffer_ranges: tuple[ShardRange, ...] | None = None
    name: str = "grpc"
    pull: str = "none"  # the codec the shards answer with (none, fp16, bf16; protos/compression.py)

    def client(self, worker_id: int, ranges: Sequence[ShardRange],
               buffer_ranges: Sequence[ShardRange] | None = None, incarnation: int = 0) -> "GrpcShardClient":
        return GrpcShardClient(worker_id, self.addresses, ranges, self.token, self.tls,
                               self.timeout_s, self.chunk_bytes, buffer_ranges, incarnation, Codec(self.pull))

    def connect(self, worker_id: int, incarnation: int = 0) -> "GrpcShardClient":
        """The transport seam (ps/transport/contract.py): a client over this job's ranges."""
        return self.client(worker_id, self.ranges, self.buffer_ranges, incarnation)


class _LoopThread:
    """An asyncio loop on a daemon thread, for a synchronous caller."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def open_channel(address: str, tls: TLS | None) -> grpc.aio.Channel:
    keep_freed_memory()  # every chunk is a fresh buffer: reuse freed ones (ps/transport/allocator.py)
    # A reconnect after a shard's restart must dial at once. In gRPC's global subchannel pool a new channel
    # shares the old one's subchannel, and with it a reconnect backoff that grows to 120 s: calls fail fast
    # with the last "connection refused" while the restarted shard already serves. Each channel gets its own.
    options = list(CHANNEL_OPTIONS) + [("grpc.use_local_subchannel_pool", 1), ("grpc.max_reconnect_backoff_ms", 2_000)]
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


class GrpcShardClient(ShardClientBase):
    name = "grpc"
    fills_on_wait = False  # the loop thread assembles chunks into params_out as they arrive

    def __init__(self, worker_id: int, addresses: Sequence[str], ranges: Sequence[ShardRange], token: str,
                 tls: TLS | None = None, timeout_s: float = 300.0, chunk_bytes: int = CHUNK_BYTES,
                 buffer_ranges: Sequence[ShardRange] | None = None, incarnation: int = 0,
                 pull_codec: Codec | None = None):
        super().__init__(worker_id, ranges, buffer_ranges, incarnation, len(addresses))
        self._tls = tls
        self.addresses = list(addresses)
        self._metadata = TokenAuth(token).metadata
        self._timeout_s = timeout_s
        self._chunk_bytes = chunk_bytes
        self._pull_codec = pull_codec or Codec()
        self._streams: list = [None] * len(addresses)
        self._ended: list[_FirstStatus | None] = [None] * len(addresses)  # each stream's status
        self._loop = _LoopThread(f"grpc-client-{worker_id}")
        self._connect()

    def _connect(self) -> None:
        self._channels = self._loop.run(self._open(self._tls))
        self._stubs = [ps_pb2_grpc.ParameterServerStub(c) for c in self._channels]
        # The tensor streams skip the generated stubs' serializers: chunks go out
        # already encoded and come in with their payload as a view (protos/codec.py).
        self._step_calls = [c.stream_stream(f"/{SERVICE}/Step", request_serializer=None,
                                            response_deserializer=parse_chunk) for c in self._channels]
        self._pull_calls = [c.unary_stream(f"/{SERVICE}/Pull", request_serializer=ps_pb2.PullRequest.SerializeToString,
                                           response_deserializer=parse_chunk) for c in self._channels]

    async def _open(self, tls):
        return [open_channel(a, tls) for a in self.addresses]

    # ---- the transport contract (ps/transport/contract.py) ---------------------------------

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int:
        return self._call(self._register_all(params_out, buffers_out))

    def reconnect(self) -> None:
        """Fresh channels to the same addresses (a restarted shard serves where it served)."""
        if self._loop is None:
            raise TransportError("the client is closed")
        self._loop.run(self._close_all(), timeout=10)
        self._connect()

    def push_pull_async(self, clock: int, grads: np.ndarray, params_out: np.ndarray, num_samples: int,
                        loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                        ahead: int = 0) -> Pending:
        if self._loop is None:
            raise TransportError("the client is closed")
        # Encoded here, in the caller's thread: the chunks are the snapshot, so the
        # caller may overwrite its gradient as soon as this returns.
        encoded = [self._encode(step) for step in self.steps(clock, grads, num_samples, loss, buffers, ahead)]
        future = asyncio.run_coroutine_threadsafe(_gather(
            self._step(i, clock, encoded[i], params_out, buffers_out) for i in range(len(self._stubs))),
            self._loop.loop)
        return Pending(lambda: self._result(future))

    def _encode(self, step: Step) -> list[bytes]:
        header = dict(worker_id=step.worker_id, incarnation=step.incarnation, seq=step.seq, clock=step.clock,
                      pulled_version=step.pulled_version, num_samples=step.num_samples, loss=step.loss,
                      buffers_follow=step.buffers is not None, ahead=step.ahead)
        # a compressed gradient travels as its blob: dtype uint8, its own length (protos/compression.py)
        wire = BLOB_DTYPE if step.grad.dtype == np.uint8 else WIRE_DTYPE
        chunks = list(encode_chunks(TENSOR, step.grad, self._chunk_bytes, wire=wire, **header))
        if step.buffers is not None:
            chunks += encode_chunks(BUFFERS, step.buffers, self._chunk_bytes, wire=BUFFER_DTYPE)
        return chunks

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list[np.ndarray | None]:
        requests = self._pull_requests(table, ids_per_shard, clock)
        return self._call(_gather(self._sparse_pull(stub, r) for stub, r in zip(self._stubs, requests)))

    def _pull_requests(self, table: str, ids_per_shard, clock: int) -> list:
        requests = []
        for ids in ids_per_shard:
            data = np.ascontiguousarray(ids, IDS_DTYPE).tobytes()
            check_message_size(len(data) * 3, f"a pull of {len(ids)} rows of table {table!r}")
            requests.append(ps_pb2.SparsePullRequest(worker_id=self.worker_id, incarnation=self.incarnation,
                                                     table=table, clock=clock, ids=data) if len(ids) else None)
        return requests

    async def _sparse_pull(self, stub, request) -> np.ndarray | None:
        if request is None:
            return None
        reply = await stub.SparsePull(request, timeout=self._timeout_s, metadata=self._metadata)
        return decode_rows(reply.rows, reply.count, reply.dim)

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                          grads_per_shard: list[np.ndarray], num_samples: int) -> Pending:
        requests = self._push_requests(table, clock, ids_per_shard, grads_per_shard, num_samples)
        future = asyncio.run_coroutine_threadsafe(_gather(
            self._sparse_push(stub, r) for stub, r in zip(self._stubs, requests)), self._loop.loop)
        return Pending(lambda: self._result(future))

    def sparse_push_pull_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                               grads_per_shard: list[np.ndarray], num_samples: int,
                               pull_ids_per_shard: list[np.ndarray]) -> Pending:
        """Each shard's push, then its pull once the push is answered, in the client's loop while the
        caller computes: the pull reads the push, and neither waits in the caller."""
        pushes = self._push_requests(table, clock, ids_per_shard, grads_per_shard, num_samples)
        pulls = self._pull_requests(table, pull_ids_per_shard, clock + 1)

        async def push_then_pull(stub, push, pull):
            await self._sparse_push(stub, push)
            return await self._sparse_pull(stub, pull)
        future = asyncio.run_coroutine_threadsafe(_gather(
            push_then_pull(stub, push, pull) for stub, push, pull in zip(self._stubs, pushes, pulls)),
            self._loop.loop)
        return Pending(lambda: self._result(future))

    def _push_requests(self, table: str, clock: int, ids_per_shard, grads_per_shard, num_samples: int) -> list:
        if self._loop is None:
            raise TransportError("the client is closed")
        requests = []  # built here, in the caller's thread: the bytes are the snapshot
        for ids, grads in zip(ids_per_shard, grads_per_shard):
            if isinstance(grads, EncodedRows):  # compressed rows: the blob, its codec named
                data, dim, codec = grads.blob.tobytes(), grads.dim, grads.codec
            else:
                data, dim, codec = (np.ascontiguousarray(grads, WIRE_DTYPE).tobytes(),
                                    grads.shape[1] if grads.ndim == 2 else 0, "")
            request = ps_pb2.SparsePushRequest(
                worker_id=self.worker_id, incarnation=self.incarnation, table=table, clock=clock,
                ids=np.ascontiguousarray(ids, IDS_DTYPE).tobytes(), grads=data, dim=dim, num_samples=num_samples,
                codec=codec)
            check_message_size(request.ByteSize(), f"a push of {len(ids)} rows of table {table!r}")
            requests.append(request)
        return requests

    async def _sparse_push(self, stub, request):
        return await stub.SparsePush(request, timeout=self._timeout_s, metadata=self._metadata)

    def finish(self) -> None:
        try:
            self._call(_gather(self._leave(stub) for stub in self._stubs))
        finally:
            self.close()

    def stats(self) -> list[dict]:
        """Every shard's counters (msgpack over the wire)."""
        return [msgpack.unpackb(reply.msgpack, strict_map_key=False)
                for reply in self._call(_gather(self._stats(stub) for stub in self._stubs))]

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._loop.run(self._close_all(), timeout=10)
        finally:
            self._loop.close()
            self._loop = None

    # ---- per shard ---------------------------------------------------------------

    async def _register_all(self, params_out: np.ndarray, buffers_out: np.ndarray | None) -> int:
        replies = await asyncio.gather(*(
            stub.Register(ps_pb2.RegisterRequest(worker_id=self.worker_id, incarnation=self.incarnation),
                          timeout=self._timeout_s, metadata=self._metadata) for stub in self._stubs))
        for reply, r, b, address in zip(replies, self.ranges, self.buffer_ranges, self.addresses):
            shapes = {t.name: list(t.shape) for t in reply.tensors}
            expected = {TENSOR: [r.size], **({BUFFERS: [b.size]} if b.size else {})}
            if shapes != expected:
                raise ShapeError(f"shard at {address} holds {shapes}, but this job expects {expected}")
        await asyncio.gather(*(self._pull(i, reply.clock + 1, params_out, buffers_out)
                               for i, reply in enumerate(replies)))
        return self.carry_on([(reply.clock, reply.seq) for reply in replies])

    def _receivers(self, i: int, params_out: np.ndarray, buffers_out: np.ndarray | None,
                   clock: int = 0) -> list[Assembler]:
        """What shard ``i``'s answer (to the push of ``clock``; 0: a pull of all of it) is assembled into: its
        parameter slice (a push's fragment of it), then its buffer slice."""
        r, b = self.ranges_at(clock)[i], self.buffer_ranges[i]
        receivers = [Assembler(TENSOR, r.size, params_out[r.lo:r.hi]) if self._pull_codec.lossless
                     else _Decoding(TENSOR, self._pull_codec, params_out[r.lo:r.hi])]
        if b.size:
            out = buffers_out[b.lo:b.hi] if buffers_out is not None else None
            receivers.append(Assembler(BUFFERS, b.size, out, wire=BUFFER_DTYPE))
        return receivers

    async def _pull(self, i: int, clock: int, params_out: np.ndarray, buffers_out: np.ndarray | None) -> None:
        receivers = self._receivers(i, params_out, buffers_out)
        call = self._pull_calls[i](ps_pb2.PullRequest(worker_id=self.worker_id, clock=clock),
                                   timeout=self._timeout_s, metadata=self._metadata)
        async for chunk in call:
            if chunk.offset == 0 and chunk.name == TENSOR:
                self.versions[i] = chunk.version
            if receivers and receivers[0].add(chunk):
                receivers.pop(0)

    async def _leave(self, stub):
        return await stub.AdvanceClock(ps_pb2.ClockRequest(worker_id=self.worker_id, leave=True,
                                                           incarnation=self.incarnation),
                                       timeout=self._timeout_s, metadata=self._metadata)

    async def _stats(self, stub):
        return await stub.Stats(ps_pb2.StatsRequest(), timeout=self._timeout_s, metadata=self._metadata)

    async def _step(self, i, clock, encoded: list[bytes], params_out, buffers_out) -> None:
        if self._streams[i] is None:
            self._streams[i] = self._step_calls[i](timeout=STREAM_DEADLINE_S, metadata=self._metadata)
            self._ended[i] = _FirstStatus(self._streams[i])
        stream, ended = self._streams[i], self._ended[i]
        try:
            await _within(self._exchange(stream, i, encoded, self._receivers(i, params_out, buffers_out, clock)),
                          self._timeout_s)
        except BaseException as e:
            try:
                error = await self._step_error(i, clock, stream, ended, e)
            finally:
                # Whatever went wrong, the stream is dead or mid-step: the next step opens a fresh one.
                stream.cancel()
                self._streams[i] = self._ended[i] = None
            if error is None:
                raise
            raise error from None

    async def _step_error(self, i, clock, stream, ended: _FirstStatus, e: BaseException) -> TransportError | None:
        """``e`` from step ``clock`` on shard ``i`` as a TransportError; None to re-raise it as it is."""
        where = f"shard at {self.addresses[i]}, step {clock}"
        if isinstance(e, asyncio.TimeoutError):
            return TransportError(f"{where}: no answer within {self._timeout_s:g} s")
        if isinstance(e, (grpc.aio.AioRpcError, asyncio.InvalidStateError)):
            # InvalidStateError: a write on a call the server had already ended.
            if ended.status is not None:
                code, details = ended.status
            elif isinstance(e, grpc.aio.AioRpcError):
                code, details = e.code(), e.details()
            else:
                return TransportError(f"{where}: the stream had ended")
            if (code, details) == _FAILED_WRITE:  # the shard's own status is on its way: it replaces this one
                deadline = time.monotonic() + _STATUS_WAIT_S
                while (code, details) == _FAILED_WRITE and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                    code, details = await stream.code(), await stream.details()
            return TransportError(f"{where}: {code.name}: {details}")
        if isinstance(e, WireError):
            return TransportError(f"{where}: bad reply: {e.message}")
        return None

    async def _exchange(self, stream, i, encoded: list[bytes], receivers: list[Assembler]) -> None:
        for chunk in encoded:
            await stream.write(chunk)
        while receivers:
            chunk = await stream.read()
            if chunk is grpc.aio.EOF:
                raise TransportError(f"shard at {self.addresses[i]} closed the stream mid-step")
            if chunk.offset == 0 and chunk.name == TENSOR:
                self.versions[i] = chunk.version
            if receivers[0].add(chunk):
                receivers.pop(0)

    async def _close_all(self) -> None:
        for stream in self._streams:
            if stream is not None:
                stream.cancel()
        self._streams = [None] * len(self._streams)
        self._ended = [None] * len(self._ended)
        await asyncio.gather(*(c.close() for c in self._channels))

    def _call(self, coro):
        if self._loop is None:
            coro.close()
            raise TransportError("the client is closed")
        return self._result(asyncio.run_coroutine_threadsafe(coro, self._loop.loop))

    @staticmethod
    def _result(future):
        try:
            return future.result()
        except grpc.aio.AioRpcError as e:
            raise TransportError(f"{e.code().name}: {e.details()}") from None


#: The status grpc.aio gives a call whose write failed because the call had ended (grpc/grpc#36066).
_FAILED_WRITE = (grpc.StatusCode.INTERNAL, "Internal error from Core")
#: How long a step's error waits for the shard's status to replace _FAILED_WRITE.
_STATUS_WAIT_S = 1.0


class _Decoding(Assembler):
    """A compressed pull (fp16, bf16): its blob assembled, then decoded into the caller's slice."""

    def __init__(self, name: str, codec: Codec, out: np.ndarray):
        super().__init__(name, codec.nbytes(out.size), wire=BLOB_DTYPE)
        self.codec, self.out = codec, out

    def add(self, chunk) -> bool:
        done = super().add(chunk)
        if done:
            try:
                self.codec.decode(self.buffer, self.out.size, self.out)
            except CodecError as e:
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"compressed parameters: {e}") from None
        return done


class _FirstStatus:
    """The status a call first ends with, kept by its done callback.

    When a shard ends a Step while the client is still writing (it refused the
    gradient's first chunk), the failed write sets the call's status to
    ``_FAILED_WRITE``. If the shard's status came first, that overwrites it for
    good, and only this callback, run when the first status is set, saw it; if
    the failed write came first, the shard's status replaces it moments later.
    """

    def __init__(self, call: grpc.aio.Call):
        self.status: tuple[grpc.StatusCode, str] | None = None
        call.add_done_callback(self._done)

    def _done(self, call: grpc.aio.Call) -> None:
        code, details = _now(call.code()), _now(call.details())
        if code is not None and details is not None:
            self.status = (code, details)


def _now(coro):
    """The result of a coroutine that returns without waiting, as a finished call's
    ``code()`` and ``details()`` do; None (and the coroutine closed) if it would wait."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    return None


async def _gather(coros):
    """Gather inside the client's loop (coroutines are created by the calling thread).

    A single coroutine (one shard) is awaited as it is: a task per call would
    add loop turns to every step's latency for nothing. When one fails, the
    others are cancelled before the error goes to the caller.
    """
    coros = list(coros)
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        # One shard failed: stop the others rather than let them write into the
        # caller's buffers after it has the error (a cancelled step drops its stream).
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _within(coro, timeout_s: float):
    """``asyncio.wait_for`` without the task it makes per call before Python 3.12."""
    if not hasattr(asyncio, "timeout"):  # Python 3.10
        return await asyncio.wait_for(coro, timeout_s)
    async with asyncio.timeout(timeout_s):
        return await coro
