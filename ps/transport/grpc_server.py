"""The gRPC front of a ParameterShard (protos/ps.proto), on the shard's own event loop.

``start_grpc_server`` serves one shard with ``grpc.aio`` on the running event
loop: inside a Ray async actor that is the actor's loop, so gRPC handlers and
Ray calls interleave on one thread and the shard needs no locks. The actor
class that serves it is ``ServedShard`` (ps/served.py). A push and its pull
are one ``Step`` (ps/core/step.py) handed to the shard's ``step``.

Every handler first checks the bearer token (UNAUTHENTICATED) and whether the
server is shutting down (UNAVAILABLE). Requests are parsed by our own
deserializer, so bytes that are no message of the protocol become a clear
INVALID_ARGUMENT instead of a gRPC internal error. Every refusal is counted by
reason in the shard's stats, answered with the status ps/transport/statuses.py
names, and none of them changes the shard's state.
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable

import grpc
import numpy as np
import msgpack
from google.protobuf.message import DecodeError

from ...errors import PSError, TransportError
from ...protos import ps_pb2
from ...protos.codec import (BLOB_DTYPE, BUFFER_DTYPE, CHUNK_BYTES, Assembler, WireError, decode_ids, decode_rows,
                             encode_chunks, parse_chunk)
from ...protos.names import BUFFERS, PROTOCOL, SERVER_OPTIONS, SERVICE, TENSOR
from ..core.step import OUTCOMES as STEP_OUTCOMES, Step
from .allocator import keep_freed_memory
from .grpc_security import TLS, TokenAuth
from .job_ca import TLSKeys, worker_named
from .contract import Served
from .statuses import refusal

log = logging.getLogger(__name__)

OUTCOMES = dict(zip(STEP_OUTCOMES, (ps_pb2.PushReply.APPLIED, ps_pb2.PushReply.DUPLICATE, ps_pb2.PushReply.STALE)))


class _Malformed:
    """What our deserializer hands a handler for bytes that are not a message."""

    def __init__(self, kind: str, error: Exception):
        self.message = f"request is not a valid {kind} message: {error}"


def _parser(message_cls, from_bytes: Callable[[bytes], object] | None = None) -> Callable[[bytes], object]:
    from_bytes = from_bytes or message_cls.FromString

    def parse(data: bytes):
        try:
            return from_bytes(data)
        except (DecodeError, ValueError) as e:
            return _Malformed(message_cls.__name__, e)
    return parse


def _serialize_chunk(chunk) -> bytes:
    """Chunks leave the handlers already encoded (``encode_chunks``); a message is serialized."""
    return chunk if isinstance(chunk, bytes) else chunk.SerializeToString()


class ShardServicer:
    def __init__(self, shard: Served, auth: TokenAuth, chunk_bytes: int = CHUNK_BYTES, binds_workers: bool = False):
        """``binds_workers``: the server's keys are the job authority's, whose worker certificates name a
        worker life; every request must then speak for the life its client's certificate names."""
        self.shard = shard
        self.auth = auth
        self.binds_workers = binds_workers
        self.chunk_bytes = chunk_bytes
        self.closing = False
        self._spare: dict[int, Assembler] = {}  # receive buffers, reused per worker
        self._spare_buffers: dict[int, Assembler] = {}

    # ---- guards -------------------------------------------------------------------

    async def _admit_call(self, context, request=None) -> None:
        if self.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the shard is shutting down")
        if not self.auth.allows(context.invocation_metadata()):
            self.shard.count_rejection("unauthenticated")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if isinstance(request, _Malformed):
            self.shard.count_rejection("malformed")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

    def _check_identity(self, context, worker_id: int, incarnation: int | None = None) -> None:
        """Under the job's own mTLS a client speaks only as the worker life its certificate names: a stolen
        or leaked certificate pushes for one worker, not for all (PERMISSION_DENIED, counted "identity")."""
        if not self.binds_workers:
            return
        named = worker_named((context.auth_context().get("x509_common_name") or [None])[0])
        if named is None or named[0] != worker_id or (incarnation is not None and named[1] != incarnation):
            certified = "no worker" if named is None else f"worker {named[0]} incarnation {named[1]}"
            speaks = f"worker {worker_id}" + ("" if incarnation is None else f" incarnation {incarnation}")
            raise WireError(grpc.StatusCode.PERMISSION_DENIED, f"the client's certificate is {certified}'s, but"
                            f" the request speaks for {speaks}", "identity")

    @contextlib.asynccontextmanager
    async def _statuses(self, context):
        """Answer a refusal with its status (ps/transport/statuses.py; protos/ps.proto says what each means)."""
        try:
            yield
        except WireError as e:
            self.shard.count_rejection(e.reason)
            await context.abort(e.code, e.message)
        except PSError as e:
            status, counted = refusal(e)
            if counted:
                self.shard.count_rejection(counted)
            await context.abort(grpc.StatusCode[status], str(e))

    # ---- receiving a gradient -----------------------------------------------------

    async def _read_gradient(self, requests: AsyncIterator, context) -> tuple[ps_pb2.TensorChunk, Assembler,
                                                                     Assembler | None] | None:
        """Read one whole push: the gradient, then the buffers if the header says they follow.

        None when the stream ends cleanly before a push starts.
        """
        first = assembler = None
        async for chunk in requests:
            if isinstance(chunk, _Malformed):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, chunk.message)
            if first is None:
                first = chunk
                self._check_identity(context, chunk.worker_id, chunk.incarnation)
                self.shard.check_worker(chunk.worker_id)
                assembler = self._spare.pop(chunk.worker_id, None)
                if chunk.dtype == "uint8":  # a compressed gradient: the codec's blob, of its fixed size
                    if assembler is None or assembler.wire != BLOB_DTYPE:
                        assembler = Assembler(TENSOR, self.shard.grad_wire_nbytes(), wire=BLOB_DTYPE)
                else:  # the range, or the fragment of it a streaming push of this clock carries
                    lo, hi = self.shard.span(chunk.clock)
                    if assembler is None or assembler.wire == BLOB_DTYPE or assembler.size != hi - lo:
                        assembler = Assembler(TENSOR, hi - lo)
                assembler.reset()
            if assembler.add(chunk):
                break
        else:
            if first is not None:
                raise self._cut_off(assembler)
            return None
        if not first.buffers_follow:
            return first, assembler, None
        if not self.shard.buffer_size:
            raise WireError(grpc.StatusCode.NOT_FOUND,
                            f"the push says buffers follow, but this shard holds no {BUFFERS!r} tensor",
                            "unknown_tensor")
        buffers = (self._spare_buffers.pop(first.worker_id, None)
                   or Assembler(BUFFERS, self.shard.buffer_size, wire=BUFFER_DTYPE))
        buffers.reset()
        async for chunk in requests:
            if isinstance(chunk, _Malformed):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, chunk.message)
            if buffers.add(chunk):
                return first, assembler, buffers
        raise self._cut_off(buffers)

    @staticmethod
    def _cut_off(assembler: Assembler) -> WireError:
        item = assembler.wire.itemsize
        return WireError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the stream ended inside tensor {assembler.name!r}: expected {assembler.size * item}"
                         f" bytes, got {assembler._filled * item}")

    def _step(self, first: ps_pb2.TensorChunk, assembler: Assembler, buffers: Assembler | None) -> Step:
        return Step(first.worker_id, first.clock, assembler.buffer, first.pulled_version, first.num_samples,
                    first.loss, None if buffers is None else buffers.buffer, first.ahead, first.incarnation,
                    first.seq)

    def _reuse(self, step: Step, assembler: Assembler, buffers: Assembler | None) -> None:
        """The receive buffers go back for the worker's next push (the shard copied what it keeps)."""
        self._spare[step.worker_id] = assembler
        if buffers is not None:
            self._spare_buffers[step.worker_id] = buffers

    def _encoder(self) -> Callable[..., list[bytes]]:
        """What the shard's answer reads the parameters out with: the reply chunks themselves.

        Encoding happens in the shard's turn that reads the parameters, so the
        chunks are the snapshot: no copy of the parameters first.
        """
        def encode(params, outcome: str | None = None):
            version = self.shard.version
            if outcome is not None:  # a Step: the push's answer rides on the first chunk
                header["push"] = ps_pb2.PushReply(outcome=OUTCOMES[outcome], version=version)
            pull = self.shard.pull_codec
            if not pull.lossless:  # fp16 / bf16 on the wire; the shard's own copy stays float32
                return list(encode_chunks(TENSOR, pull.encode(params), self.chunk_bytes, wire=BLOB_DTYPE,
                                          version=version, **header))
            return list(encode_chunks(TENSOR, params, self.chunk_bytes, version=version, **header))
        header: dict = {}
        return encode

    def _reply_chunks(self, answer) -> list[bytes]:
        encoded = answer.params
        if answer.buffers is not None:  # the buffers travel after the parameters, as their own tensor
            encoded += encode_chunks(BUFFERS, answer.buffers, self.chunk_bytes, wire=BUFFER_DTYPE)
        encoded.reverse()  # handed out with pop(), so each chunk is freed once sent
        return encoded

    # ---- the service --------------------------------------------------------------

    async def Register(self, request, context):
        await self._admit_call(context, request)
        async with self._statuses(context):
            self._check_identity(context, request.worker_id, request.incarnation)
            clock, seq = self.shard.enter(request.worker_id, request.incarnation)
            return ps_pb2.RegisterReply(
                clock=clock, seq=seq,
                shard_id=self.shard.shard_id, version=self.shard.version, protocol=PROTOCOL,
                chunk_bytes=self.chunk_bytes,
                tensors=[ps_pb2.TensorInfo(name=TENSOR, dtype="float32", shape=[self.shard.size])] + (
                    [ps_pb2.TensorInfo(name=BUFFERS, dtype="float64", shape=[self.shard.buffer_size])]
                    if self.shard.buffer_size else []),
            )

    async def Push(self, requests, context):
        await self._admit_call(context)
        async with self._statuses(context):
            got = await self._read_gradient(requests, context)
            if got is None:
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"empty push: expected tensor {TENSOR!r}")
            async for _ in requests:  # one push per Push call: nothing may follow its last chunk
                self._reuse(self._step(*got), *got[1:])
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                                "a chunk came after the push's last chunk; a Push call carries one push", "malformed")
            step = self._step(*got)
            if step.ahead:  # the proto: Step only. A Push answers no parameters, so there is nothing to be ahead of
                self._reuse(step, *got[1:])
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ahead {step.ahead} on a Push: ahead is a Step field (a Push answers no"
                                " parameters to compute ahead of); expected 0", "ahead")
            try:
                outcome = await self.shard.push(step)
            finally:
                self._reuse(step, *got[1:])
            return ps_pb2.PushReply(outcome=OUTCOMES[outcome], version=self.shard.version)

    async def Pull(self, request, context):
        await self._admit_call(context, request)
        async with self._statuses(context):
            self._check_identity(context, request.worker_id)
            encoded = self._reply_chunks(await self.shard.pull_for(request.worker_id, request.clock,
                                                                   take=self._encoder()))
            while encoded:
                yield encoded.pop()

    async def Step(self, requests, context):
        await self._admit_call(context)
        async with self._statuses(context):
            while (got := await self._read_gradient(requests, context)) is not None:
                step = self._step(*got)
                try:
                    answer = await self.shard.step(step, take=self._encoder())
                finally:
                    self._reuse(step, *got[1:])
                encoded = self._reply_chunks(answer)
                while encoded:
                    yield encoded.pop()

    async def AdvanceClock(self, request, context):
        await self._admit_call(context, request)
        async with self._statuses(context):
            self._check_identity(context, request.worker_id, request.incarnation)
            if request.leave:
                await self.shard.finish(request.worker_id, request.incarnation)
            else:
                self.shard.advance(request.worker_id, request.clock, request.incarnation)
            return ps_pb2.ClockReply(version=self.shard.version)

    async def SparsePull(self, request, context):
        await self._admit_call(context, request)
        async with self._statuses(context):
            self._check_identity(context, request.worker_id, request.incarnation)
            rows, version = await self.shard.sparse_pull(request.worker_id, request.table, decode_ids(request.ids),
                                                         request.clock, request.incarnation)
            return ps_pb2.SparseRows(dim=rows.shape[1], count=rows.shape[0], rows=rows.tobytes(), version=version)

    async def SparsePush(self, request, context):
        await self._admit_call(context, request)
        async with self._statuses(context):
            self._check_identity(context, request.worker_id, request.incarnation)
            ids = decode_ids(request.ids)
            grads = self._sparse_rows(request, len(ids))
            outcome = await self.shard.sparse_push(request.worker_id, request.table, request.clock, ids, grads,
                                                   request.num_samples, request.incarnation)
            return ps_pb2.PushReply(outcome=OUTCOMES[outcome], version=self.shard.version)

    def _sparse_rows(self, request, count: int) -> np.ndarray:
        """A push's rows: float32, or the job's codec's blob (the shard decodes it)."""
        if not request.codec:
            return decode_rows(request.grads, count, request.dim)
        if request.codec != self.shard.codec.name:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"rows compressed with {request.codec!r}, but this"
                            f" job's codec is {self.shard.codec.name!r}", "codec")
        expected = self.shard.row_wire_nbytes(count, request.dim)
        if request.dim < 1 or len(request.grads) != expected:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{count} x {request.dim} rows in {request.codec}"
                            f" are {expected} bytes, got {len(request.grads)}", "rows_shape")
        return np.frombuffer(request.grads, BLOB_DTYPE)

    async def Stats(self, request, context):
        await self._admit_call(context, request)
        stats = await self.shard.stats()
        return ps_pb2.StatsReply(msgpack=msgpack.packb(stats, use_bin_type=True))

    def handler(self) -> grpc.GenericRpcHandler:
        P = ps_pb2
        methods = {
            "Register": grpc.unary_unary_rpc_method_handler(
                self.Register, _parser(P.RegisterRequest), P.RegisterReply.SerializeToString),
            "Push": grpc.stream_unary_rpc_method_handler(
                self.Push, _parser(P.TensorChunk, parse_chunk), P.PushReply.SerializeToString),
            "Pull": grpc.unary_stream_rpc_method_handler(
                self.Pull, _parser(P.PullRequest), _serialize_chunk),
            "Step": grpc.stream_stream_rpc_method_handler(
                self.Step, _parser(P.TensorChunk, parse_chunk), _serialize_chunk),
            "AdvanceClock": grpc.unary_unary_rpc_method_handler(
                self.AdvanceClock, _parser(P.ClockRequest), P.ClockReply.SerializeToString),
            "SparsePull": grpc.unary_unary_rpc_method_handler(
                self.SparsePull, _parser(P.SparsePullRequest), P.SparseRows.SerializeToString),
            "SparsePush": grpc.unary_unary_rpc_method_handler(
                self.SparsePush, _parser(P.SparsePushRequest), P.PushReply.SerializeToString),
            "Stats": grpc.unary_unary_rpc_method_handler(
                self.Stats, _parser(P.StatsRequest), P.StatsReply.SerializeToString),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


class GrpcShardServer:
    """A running gRPC server for one shard; ``stop`` refuses new calls, then closes."""

    def __init__(self, server: grpc.aio.Server, servicer: ShardServicer, address: str):
        self.server = server
        self.servicer = servicer
        self.address = address

    async def stop(self, grace_s: float = 1.0) -> None:
        self.servicer.closing = True
        await self.server.stop(grace_s)


async def start_grpc_server(shard: Served, token: str, host: str = "127.0.0.1", port: int = 0,
                            tls: TLS | None = None, chunk_bytes: int = CHUNK_BYTES) -> GrpcShardServer:
    """Serve ``shard`` on ``host:port`` (0: any free port) on the running event loop."""
    keep_freed_memory()  # every chunk is a fresh buffer: reuse freed ones (ps/transport/allocator.py)
    servicer = ShardServicer(shard, TokenAuth(token), chunk_bytes, binds_workers=isinstance(tls, TLSKeys))
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((servicer.handler(),))
    where = f"{host}:{port}"
    bound = server.add_secure_port(where, tls.server_credentials()) if tls else server.add_insecure_port(where)
    if not bound:
        raise TransportError(f"could not bind a gRPC server to {where}")
    await server.start()
    address = f"{host}:{bound}"
    log.info("%r serves gRPC on %s (%s)", shard, address, "mTLS" if tls else "plaintext")
    return GrpcShardServer(server, servicer, address)
