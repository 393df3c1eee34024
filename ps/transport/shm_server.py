"""The same-node transport's server: a shard's shared-memory segment and its Unix socket.

``start_shm_server`` runs on the shard's event loop (inside the Ray actor,
the actor's own loop), so requests interleave with Ray calls and gRPC on one
thread and the shard needs no locks. Per step, a worker's gradient lies in its own
segment (or, compressed, in its slot) and it sends one ``REQUEST``; the shard
applies it straight from there (no copy), waits as the consistency mode says,
writes the parameters back there and replies. Protocol and layout:
protos/shm_wire.py.

Trust: the segment and the socket live in a directory only this user can
open (0700), and a connection is served only after it presents the job's
token. A worker's own segment is opened by a name the shard derives (the
job's tag and the connection's worker id), only as a regular file of this
user's in a directory only this user can open, with no symbolic link
followed. A refused request gets a status and a message; the connection and
the shard keep serving.
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import logging
import mmap
import os
import shutil
import stat
import tempfile

import numpy as np

from ...errors import InputError, PSError, ShapeError, UnknownTensorError, UnknownWorkerError
from ...protos.shm_wire import (BUFFERS_FOLLOW, COMPRESSED, FINISH, HELLO, IN_SEGMENT, LAYOUT, MAX_SPARSE_BYTES,
                                MESSAGE, OK, PUBLISHED, PUSH_PULL, REGISTER, REPLY, REQUEST, SPARSE, SPARSE_PULL,
                                SPARSE_PUSH, SPARSE_ROWS, STATUSES, WORKER_SEGMENT_FILE, SegmentPlace, SlotLayout,
                                WorkerSegment, published_nbytes, published_params_file, segment_name,
                                worker_segment_dir)
from ..core.step import OUTCOMES, Step
from .contract import Served
from .shm_files import remove_entry, tagged_entries
from .statuses import refusal

log = logging.getLogger(__name__)


#: Status names (ps/transport/statuses.py) to this wire's status bytes.
CODES = {name: code for code, name in STATUSES.items()}
#: Every request flag this wire defines (protos/shm_wire.py); another bit is a request of another protocol.
KNOWN_FLAGS = BUFFERS_FOLLOW | COMPRESSED | IN_SEGMENT | PUBLISHED


def _open_own_file(path: str, nbytes: int) -> mmap.mmap:
    """Open (or make) ``path`` as this user's regular file of at least ``nbytes``, following no link, and map it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(f"{path} is not a file of this user's alone")
        if st.st_size < nbytes:  # each shard may make it; all make it this size
            os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)



def _reply(status: int, version: int = 0, outcome: int = 0, message: str = "", clock: int = 0, seq: int = 0) -> bytes:
    text = message.encode()
    return REPLY.pack(status, outcome, version, clock, seq) + MESSAGE.pack(len(text)) + text


class ShmShardServer:
    """One shard's directory: a segment per worker, and the socket its workers talk on.

    ``directory``: serve there (a restarted shard serves where its previous life did, so
    workers reconnect to the same place); default a fresh one under /dev/shm.
    """

    def __init__(self, shard: Served, token: str, root: str | None = None, directory: str | None = None,
                 place: SegmentPlace | None = None):
        self.shard = shard
        self.place = place
        self._token = token.encode()
        self.layout = SlotLayout(shard.size, shard.buffer_size)
        self._maps: dict[int, mmap.mmap] = {}  # worker -> its segment, made at its first connection
        if directory is None:
            base = root or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
            directory = tempfile.mkdtemp(prefix=f"rayps-shard{shard.shard_id}-", dir=base)  # mode 0700
        else:  # what a dead life left here is stale: start clean, with the same name
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory, mode=0o700)
        self.directory = directory
        # A process that exits without stop() still removes it (a SIGKILLed one cannot: the driver does).
        atexit.register(shutil.rmtree, self.directory, True)
        self.socket_path = os.path.join(self.directory, "socket")
        self._server: asyncio.AbstractServer | None = None

    def _segment(self, worker_id: int) -> mmap.mmap:
        if worker_id not in self._maps:
            size = self.layout.nbytes
            fd = os.open(os.path.join(self.directory, segment_name(worker_id)), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, size)
                self._maps[worker_id] = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        return self._maps[worker_id]

    async def start(self) -> None:
        if self.place is not None:  # the shard's parameters move into the job's published file, at its range
            place = self.place
            self._published = _open_own_file(published_params_file(os.path.dirname(self.directory), place.tag),
                                             published_nbytes(place.total))
            self.shard.place_params(np.ndarray(self.shard.size, np.float32, self._published, 4 * place.lo))
        self._server = await asyncio.start_unix_server(self._serve, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        log.info("%r serves same-node clients in %s", self.shard, self.directory)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.place is not None:  # the published parameters, and what workers that died without finishing left
            for left in tagged_entries(os.path.dirname(self.directory), self.place.tag):
                remove_entry(left)

    def _worker_segment(self, worker_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Map worker ``worker_id``'s own segment; its gradient and parameters at this shard's range (views
        that keep the mapping alive)."""
        place, size = self.place, self.shard.size
        if place is None:
            raise self._refuse("segment", InputError("this shard serves no workers' segments (IN_SEGMENT)", "segment"))
        directory = worker_segment_dir(os.path.dirname(self.directory), place.tag, worker_id)
        layout = WorkerSegment(place.total)
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            raise self._refuse("segment", InputError(f"worker {worker_id}'s segment: {e.strerror}", "segment")) from None
        try:
            st = os.fstat(dir_fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise self._refuse("segment", InputError(
                    f"worker {worker_id}'s segment directory is not this user's alone (mode {st.st_mode & 0o777:o})",
                    "segment"))
            fd = os.open(WORKER_SEGMENT_FILE, os.O_RDWR | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as e:
            raise self._refuse("segment", InputError(f"worker {worker_id}'s segment: {e.strerror}", "segment")) from None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size < layout.nbytes:
                raise self._refuse("segment", InputError(
                    f"worker {worker_id}'s segment is not a file of {layout.nbytes} bytes of this user's", "segment"))
            segment = mmap.mmap(fd, layout.nbytes)
        finally:
            os.close(fd)
        lo = place.lo
        grad = np.ndarray(size, np.float32, segment, layout.grad_at + 4 * lo)
        params = np.ndarray(size, np.float32, segment, layout.params_at + 4 * lo)
        return grad, params

    # ---- one worker's connection ----------------------------------------------------

    def _view(self, worker_id: int, at: int, count: int, dtype) -> np.ndarray:
        return np.ndarray(count, dtype=dtype, buffer=self._segment(worker_id), offset=at)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            worker_id = await self._handshake(reader, writer)
            if worker_id is None:
                return
            lay = self.layout
            grad = self._view(worker_id, lay.grad_at, lay.params, np.float32)
            # a compressed push's blob lies in the same region, as long as the codec makes it
            blob = self._view(worker_id, lay.grad_at, self.shard.grad_wire_nbytes(), np.uint8)
            params = self._view(worker_id, lay.params_at, lay.params, np.float32)
            buffers_in = self._view(worker_id, lay.buffers_in_at, lay.buffers, np.float64)
            buffers_out = self._view(worker_id, lay.buffers_out_at, lay.buffers, np.float64)
            own = None  # the worker's own segment, mapped at its first request that names it
            while True:
                try:
                    header = await reader.readexactly(REQUEST.size)
                except asyncio.IncompleteReadError:
                    return  # the worker closed (finished, or its process ended)
                op, flags, who, clock, pulled, samples, loss, ahead, incarnation, seq = REQUEST.unpack(header)
                if op in (SPARSE_PULL, SPARSE_PUSH):
                    payload = await self._read_sparse(reader, op, flags)
                    if payload is None:  # larger than any request may be: the stream cannot be trusted
                        self.shard.count_rejection("malformed")
                        writer.write(_reply(CODES["INVALID_ARGUMENT"], message="sparse request over the size limit"))
                        await writer.drain()
                        return
                    try:
                        if who != worker_id:
                            raise UnknownWorkerError(f"this connection is worker {worker_id}'s, not worker {who}'s")
                        self._check_flags(flags)
                        reply = await self._sparse(op, worker_id, clock, samples, incarnation, *payload)
                    except PSError as e:
                        reply = self._refused(e)
                    writer.write(reply)
                    await writer.drain()
                    continue
                try:
                    if who != worker_id:
                        raise UnknownWorkerError(f"this connection is worker {worker_id}'s, not worker {who}'s")
                    self._check_flags(flags)
                    into = grad, params
                    if flags & IN_SEGMENT:
                        if own is None:
                            own = self._worker_segment(worker_id)
                        into = own
                    reply = await self._handle(op, flags, worker_id, clock, pulled, samples, loss, ahead,
                                               incarnation, seq, blob if flags & COMPRESSED else into[0], into[1],
                                               buffers_in, buffers_out)
                except PSError as e:
                    reply = self._refused(e)
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    def _refuse(self, reason: str, error: PSError) -> PSError:
        """Count a refusal this server makes itself (the shard counts its own), and hand back the error."""
        self.shard.count_rejection(reason)
        return error

    def _check_flags(self, flags: int) -> None:
        if flags & ~KNOWN_FLAGS:
            raise self._refuse("flags", InputError(
                f"request flags {flags:#x} hold bits this wire does not define (known: {KNOWN_FLAGS:#x})", "flags"))

    def _refused(self, error: PSError) -> bytes:
        """A refusal's reply: its status (ps/transport/statuses.py) and message; counted where the shard did not."""
        status, counted = refusal(error)
        if counted:
            self.shard.count_rejection(counted)
        return _reply(CODES[status], message=str(error))

    async def _read_sparse(self, reader, op: int, flags: int):
        """The rest of a sparse request, read whole before anything is checked (the stream stays in step).
        Compressed rows are as long as the job's codec makes them; the shard decodes them."""
        name_len, dim, count = SPARSE.unpack(await reader.readexactly(SPARSE.size))
        compressed = bool(flags & COMPRESSED) and op == SPARSE_PUSH and dim > 0
        rows = 0 if op != SPARSE_PUSH else self.shard.row_wire_nbytes(count, dim) if compressed else count * dim * 4
        size = name_len + count * 8 + rows
        if size > MAX_SPARSE_BYTES:
            return None
        name = (await reader.readexactly(name_len)).decode("utf-8", "replace")
        ids = await reader.readexactly(count * 8)
        grads = await reader.readexactly(rows) if rows else b""
        return name, dim, count, ids, (np.frombuffer(grads, np.uint8) if compressed else grads)

    async def _sparse(self, op, worker_id, clock, samples, incarnation, table, dim, count, ids, grads) -> bytes:
        ids = np.frombuffer(ids, "<i8").astype(np.int64, copy=False)
        if op == SPARSE_PULL:
            rows, version = await self.shard.sparse_pull(worker_id, table, ids, clock, incarnation)
            return _reply(OK, version) + SPARSE_ROWS.pack(rows.shape[0], rows.shape[1], version) + rows.tobytes()
        if isinstance(grads, bytes):  # float32 rows (a compressed push's blob is the shard's to decode)
            grads = np.frombuffer(grads, "<f4").astype(np.float32, copy=False).reshape(count, dim) if dim else \
                np.zeros((count, 0), np.float32)
        outcome = await self.shard.sparse_push(worker_id, table, clock, ids, grads, samples, incarnation)
        return _reply(OK, self.shard.version, OUTCOMES.index(outcome))

    async def _handshake(self, reader, writer) -> int | None:
        token_len, worker_id = HELLO.unpack(await reader.readexactly(HELLO.size))
        token = await reader.readexactly(min(token_len, 1024))
        if not hmac.compare_digest(token, self._token):
            self.shard.count_rejection("unauthenticated")
            writer.write(_reply(CODES["UNAUTHENTICATED"], message="missing or wrong token"))
            await writer.drain()
            return None
        try:
            self.shard.check_worker(worker_id)
        except UnknownWorkerError as e:
            writer.write(self._refused(e))
            await writer.drain()
            return None
        self._segment(worker_id)
        writer.write(LAYOUT.pack(OK, self.layout.params, self.layout.buffers, 0))
        await writer.drain()
        return worker_id

    async def _handle(self, op, flags, worker_id, clock, pulled, samples, loss, ahead, incarnation, seq,
                      grad, params, buffers_in, buffers_out) -> bytes:
        def into_slot(values: np.ndarray, outcome: str | None = None) -> None:
            if not flags & PUBLISHED:  # else the worker reads them where they lie
                # in the shard's turn that reads them: the snapshot this reply answers with; a push's answer
                # is its fragment of the range (all of it without fragments), a registration all of it
                lo = self.shard.span(clock)[0] if op == PUSH_PULL else 0
                params[lo:lo + values.size] = values

        if flags & PUBLISHED and not self.shard.publishes_in_place:  # only where nobody writes them meanwhile
            raise self._refuse("published", InputError(
                "PUBLISHED: this shard's parameters change while workers compute (only bsp without a quorum keeps"
                " them still); read the answer from the segment", "published"))

        if op == FINISH:
            await self.shard.finish(worker_id, incarnation)
            return _reply(OK, self.shard.version)
        if op == PUSH_PULL:
            if flags & BUFFERS_FOLLOW and not self.shard.buffer_size:  # as gRPC answers the same push
                raise self._refuse("unknown_tensor", UnknownTensorError(
                    "the push says buffers follow, but this shard holds no 'buffers' tensor"))
            # the worker writes its segment again only after this answer: a round may keep its gradient uncopied
            held = bool(flags & IN_SEGMENT) and not flags & COMPRESSED
            step = Step(worker_id, clock, grad, pulled, samples, loss, buffers_in if flags & BUFFERS_FOLLOW else None,
                        ahead, incarnation, seq, held)
            answer, position = await self.shard.step(step, take=into_slot), (0, 0)
        elif op == REGISTER:  # the parameters for the worker's next iteration, and where it carries on
            *position, pulled = await self.shard.register(worker_id, incarnation, take=into_slot)
            answer = (*pulled, "applied")
        else:
            raise self._refuse("malformed", ShapeError(
                f"unknown request op {op}; expected REGISTER ({REGISTER}), PUSH_PULL ({PUSH_PULL}), FINISH ({FINISH}),"
                f" SPARSE_PULL ({SPARSE_PULL}) or SPARSE_PUSH ({SPARSE_PUSH})"))
        _, version, buffers, outcome = answer
        if buffers is not None:
            buffers_out[:] = buffers
        return _reply(OK, version, OUTCOMES.index(outcome), clock=position[0], seq=position[1])


async def start_shm_server(shard: Served, token: str, root: str | None = None,
                           directory: str | None = None, place: SegmentPlace | None = None) -> ShmShardServer:
    server = ShmShardServer(shard, token, root, directory, place)
    await server.start()
    return server
