"""The same-node transport's client: shared memory for the tensors, a Unix socket to wake the shard.

Same contract as every transport (ps/transport/contract.py). The worker owns a
segment holding its whole gradient and parameters (``shared_buffers``); a
worker whose model trains on those very buffers (worker/loop/flat.py:
``FlatParams.adopt``) pushes and pulls with no copy at all: per step and
shard, one 36-byte request says the gradient is at the shard's range, the
shard reads it there and writes the parameters back there, and one reply
says so. Arrays that are not the segment's are copied in and out of it.
Compressed pushes, and the model buffers, go through this worker's slot in
each shard's own segment. Requests to all shards go out before any reply is
read, so the shards work at once. Layout and messages: protos/shm_wire.py.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...errors import ShapeError, TransportError
from ...protos.shm_wire import (BUFFERS_FOLLOW, COMPRESSED, FINISH, HELLO, IN_SEGMENT, LAYOUT, MESSAGE, OK,
                                PUBLISHED, PUSH_PULL, REGISTER, REPLY, REQUEST, SPARSE, SPARSE_PULL, SPARSE_PUSH,
                                SPARSE_ROWS, STATUSES, WORKER_SEGMENT_FILE, SlotLayout, WorkerSegment,
                                published_nbytes, published_params_file, segment_name, worker_segment_dir)
from ..core.partition import ShardRange
from ..core.placement_info import acting
from .client_base import ShardClientBase
from .contract import EncodedRows, Pending


@dataclass(frozen=True)
class ShmEndpoints:
    """Where each shard's segment and socket are, on which node; what a worker needs to attach."""

    directories: tuple[str, ...]
    node_ids: tuple[str, ...]
    token: str = field(repr=False)
    ranges: tuple[ShardRange, ...] = ()
    buffer_ranges: tuple[ShardRange, ...] | None = None
    timeout_s: float = 300.0
    name: str = "shm"
    tag: str | None = None  # the job's: names each worker's own segment (None: slots only)
    # the workers read the parameters where the shards publish them (bsp without a quorum: protos/shm_wire.py)
    published: bool = False

    def connect(self, worker_id: int, incarnation: int = 0) -> "ShmShardClient":
        return self.client(worker_id, incarnation)

    def client(self, worker_id: int, incarnation: int = 0, total: int | None = None) -> "ShmShardClient":
        """``total``: the whole vector's size, where these shards hold only part of it (the rest is reached
        another way: ps/transport/mixed.py); the worker's segment holds the whole of it either way."""
        return ShmShardClient(worker_id, self.directories, self.ranges, self.token, self.buffer_ranges,
                              self.timeout_s, self.node_ids, incarnation, self.tag, self.published, total)


def _same(a: np.ndarray | None, b: np.ndarray) -> bool:
    """Whether ``a`` is exactly the array ``b`` (the same memory, shape and type), not a copy of it."""
    return isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and \
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def _map_published(root: str, tag: str, size: int) -> np.ndarray:
    """The shards' published parameters, the whole vector, mapped read-only: a worker never writes them."""
    path = published_params_file(root, tag)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_size < published_nbytes(size):
            raise TransportError(f"{path} is not the shards' published parameters ({st.st_size} bytes)")
        mapped = mmap.mmap(fd, published_nbytes(size), prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return np.ndarray(size, np.float32, mapped, 0)


class _OwnSegment:
    """This worker's segment: its whole gradient and parameters, in a directory only this user can open.

    Made afresh by each life of the worker (what a dead one left is stale), kept across reconnects, removed
    when the worker finishes or its process exits (the shards remove what a SIGKILLed worker left)."""

    def __init__(self, root: str, tag: str, worker_id: int, size: int, published: bool = False):
        self.directory = worker_segment_dir(root, tag, worker_id)
        shutil.rmtree(self.directory, ignore_errors=True)
        os.mkdir(self.directory, 0o700)
        atexit.register(shutil.rmtree, self.directory, True)
        layout = WorkerSegment(size)
        fd = os.open(os.path.join(self.directory, WORKER_SEGMENT_FILE), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, layout.nbytes)
            self.map = mmap.mmap(fd, layout.nbytes)
        finally:
            os.close(fd)
        self.grad = np.ndarray(size, np.float32, self.map, layout.grad_at)
        self.params = np.ndarray(size, np.float32, self.map, layout.params_at)
        published = _map_published(root, tag, size) if published else None
        self.answers = published if published is not None else self.params  # where the shards' answer lies
    def remove(self) -> None:
        """The files go; the mapping stays valid for whoever still holds a view of it."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        part = sock.recv(n - got)
        if not part:
            raise ConnectionError("the shard closed the connection")
        chunks.append(part)
        got += len(part)
    return b"".join(chunks)


@contextlib.contextmanager
def _answering(where: str, what: str):
    """A socket that times out or fails while an answer is read: a TransportError naming the call."""
    try:
        yield
    except socket.timeout:
        raise TransportError(f"shard at {where}, {what}: no answer in time") from None
    except OSError as e:
        raise TransportError(f"shard at {where}, {what}: {e}") from None


def _answer(sock: socket.socket, where: str, what: str) -> tuple[int, int, int, int]:
    """Read one REPLY and its message; a refusal raises TransportError with the shard's message.
    Returns (outcome, version, clock, seq)."""
    status, outcome, version, clock, seq = REPLY.unpack(_recv_exactly(sock, REPLY.size))
    (length,) = MESSAGE.unpack(_recv_exactly(sock, MESSAGE.size))
    message = _recv_exactly(sock, length).decode() if length else ""
    if status != OK:
        raise TransportError(f"shard at {where}, {what}: {STATUSES.get(status, status)}: {message}")
    return outcome, version, clock, seq


def _hello(directory: str, worker_id: int, token: str, timeout_s: float) -> tuple[socket.socket, tuple]:
    """Connect to a shard's socket and present the token; return the socket and the LAYOUT fields."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(os.path.join(directory, "socket"))
    raw = token.encode()
    sock.sendall(HELLO.pack(len(raw), worker_id) + raw)
    head = _recv_exactly(sock, REPLY.size)  # a refusal is a REPLY; the layout is 16 bytes longer
    status = head[0]
    if status != OK:
        (length,) = MESSAGE.unpack(_recv_exactly(sock, MESSAGE.size))
        message = _recv_exactly(sock, length).decode()
        sock.close()
        raise TransportError(f"shard at {directory}: {STATUSES.get(status, status)}: {message}")
    return sock, LAYOUT.unpack(head + _recv_exactly(sock, LAYOUT.size - REPLY.size))


class _Link:
    """One shard: the socket, the mapped segment, and numpy views of this worker's slot."""

    def __init__(self, directory: str, worker_id: int, token: str, size: int, buffers: int, timeout_s: float):
        self.where = directory
        self.clock = self.seq = 0  # what the last REGISTER reply said: where this worker carries on
        self.sock, (_, params, nbuffers, offset) = _hello(directory, worker_id, token, timeout_s)
        if (params, nbuffers) != (size, buffers):
            raise TransportError(f"shard at {directory} holds {params} parameters and {nbuffers} buffer values,"
                                 f" but this job expects {size} and {buffers}")
        fd = os.open(os.path.join(directory, segment_name(worker_id)), os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        lay = SlotLayout(size, buffers)
        view = lambda at, n, dtype: np.ndarray(n, dtype=dtype, buffer=self.map, offset=offset + at)  # noqa: E731
        self.grad = view(lay.grad_at, size, np.float32)
        self.blob = view(lay.grad_at, lay.grad_nbytes, np.uint8)  # the same region, for a compressed push
        self.params = view(lay.params_at, size, np.float32)
        self.buffers_in = view(lay.buffers_in_at, buffers, np.float64)
        self.buffers_out = view(lay.buffers_out_at, buffers, np.float64)

    def send(self, op: int, worker_id: int, clock: int = 0, pulled: int = 0, samples: int = 0, loss: float = 0.0,
             ahead: int = 0, flags: int = 0, incarnation: int = 0, seq: int = 0) -> None:
        self.sock.sendall(REQUEST.pack(op, flags, worker_id, clock, pulled, samples, loss, ahead, incarnation, seq))

    def receive(self, what: str) -> int:
        """The reply's version; a refusal raises TransportError with the shard's message."""
        with _answering(self.where, what):
            _, version, self.clock, self.seq = _answer(self.sock, self.where, what)
        return version

    def close(self) -> None:
        self.sock.close()
        for name in ("grad", "blob", "params", "buffers_in", "buffers_out"):
            setattr(self, name, None)  # views first: a mapping with live views cannot close
        try:
            self.map.close()
        except BufferError:  # a caller still holds a view: the mapping goes when it does
            pass


class _SparseLink:
    """One shard's connection for sparse rows (its own, so rows never queue behind a dense step)."""

    def __init__(self, directory: str, worker_id: int, token: str, timeout_s: float):
        self.where, self.worker_id = directory, worker_id
        self.sock, _ = _hello(directory, worker_id, token, timeout_s)

    def send(self, op: int, table: str, clock: int, ids: np.ndarray, grads: np.ndarray | None,
             samples: int, incarnation: int) -> None:
        name = table.encode()
        flags, rows = 0, None
        if isinstance(grads, EncodedRows):  # compressed rows: the blob, flagged
            flags, dim, rows = COMPRESSED, grads.dim, grads.blob.tobytes()
        else:
            dim = grads.shape[1] if grads is not None and grads.ndim == 2 else 0
            if grads is not None:
                rows = np.ascontiguousarray(grads, "<f4").tobytes()
        parts = [REQUEST.pack(op, flags, self.worker_id, clock, 0, samples, 0.0, 0, incarnation, 0),
                 SPARSE.pack(len(name), dim, len(ids)), name, np.ascontiguousarray(ids, "<i8").tobytes()]
        if rows is not None:
            parts.append(rows)
        try:
            self.sock.sendall(b"".join(parts))
        except OSError as e:
            raise TransportError(f"shard at {self.where}, table {table!r}: {e}") from None

    def receive(self, what: str, rows: bool) -> np.ndarray | None:
        with _answering(self.where, what):
            _answer(self.sock, self.where, what)
            if not rows:
                return None
            count, dim, _ = SPARSE_ROWS.unpack(_recv_exactly(self.sock, SPARSE_ROWS.size))
            data = _recv_exactly(self.sock, count * dim * 4)
        return np.frombuffer(data, "<f4").reshape(count, dim)

    def close(self) -> None:
        self.sock.close()


class ShmShardClient(ShardClientBase):
    name = "shm"
    fills_on_wait = True  # the slots are copied out in wait()

    def __init__(self, worker_id: int, directories: Sequence[str], ranges: Sequence[ShardRange], token: str,
                 buffer_ranges: Sequence[ShardRange] | None = None, timeout_s: float = 300.0,
                 node_ids: Sequence[str] | None = None, incarnation: int = 0, tag: str | None = None,
                 published: bool = False, total: int | None = None):
        super().__init__(worker_id, ranges, buffer_ranges, incarnation, len(directories))
        self._check_node(directories, node_ids)
        self._directories, self._token, self._timeout_s = list(directories), token, timeout_s
        size = total if total is not None else max((r.hi for r in self.ranges), default=0)
        self._segment = _OwnSegment(os.path.dirname(directories[0]), tag, worker_id, size, published) \
            if tag is not None and directories else None
        # IN_SEGMENT on every dense request where there is a segment; PUBLISHED where the answer is read in place
        self._flags = 0 if self._segment is None else IN_SEGMENT | (PUBLISHED if published else 0)
        self._links: list[_Link] = []
        self._sparse_links: list[_SparseLink] = []  # opened at the first sparse call
        self._sparse_pending: Pending | None = None  # a push whose answers are still on those sockets
        self._open()

    def _open(self) -> None:
        try:
            for d, r, b in zip(self._directories, self.ranges, self.buffer_ranges):
                self._links.append(_Link(d, self.worker_id, self._token, r.size, b.size, self._timeout_s))
        except BaseException:
            self.close()
            raise

    def reconnect(self) -> None:
        """New connections to the same directories (a restarted shard serves where it served)."""
        self.close()
        self._open()

    def _check_node(self, directories, node_ids) -> None:
        here = _node_id()
        for i, directory in enumerate(directories):
            there = node_ids[i] if node_ids and node_ids[i] else None
            elsewhere = there is not None and here is not None and there != here
            if elsewhere or not os.path.exists(os.path.join(directory, "socket")):
                raise TransportError(
                    f"transport shm: worker-{self.worker_id} (node {here}) cannot reach ps-shard-{i} (node {there})"
                    f" through shared memory: {directory} is not on this node; use transport grpc across nodes")

    def shared_buffers(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The whole gradient in this worker's segment and the parameters it reads (the shards' published ones
        under bsp, read-only; else its segment's): a model that trains on these very arrays (``FlatParams.adopt``)
        pushes and pulls with no copy. None where the shards serve no segments."""
        segment = self._segment
        return None if segment is None else (segment.grad, segment.answers)

    # ---- the transport contract (ps/transport/contract.py) ---------------------------------

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int:
        for link in self._links:
            link.send(REGISTER, self.worker_id, incarnation=self.incarnation, flags=self._flags)
        self._collect(params_out, buffers_out, "register")
        return self.carry_on([(link.clock, link.seq) for link in self._links])

    def push_pull_async(self, clock: int, grads: np.ndarray, params_out: np.ndarray, num_samples: int,
                        loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                        ahead: int = 0) -> Pending:
        segment = self._segment
        for i, (link, step) in enumerate(zip(self._links, self.steps(clock, grads, num_samples, loss, buffers,
                                                                      ahead))):
            # into shared memory: the snapshot, so the caller may overwrite grads once we return (unless they
            # are the segment's own: then the caller waits for the answer before computing into them again)
            if step.grad.dtype == np.uint8:  # a compressed push: the codec's blob
                if step.grad.size > link.blob.size:
                    raise ShapeError(f"a compressed push of {step.grad.size} bytes does not fit shard"
                                     f" {link.where}'s slot of {link.blob.size}")
                link.blob[:step.grad.size] = step.grad
                flags = COMPRESSED
            elif segment is not None:
                r = self.ranges_at(clock)[i]
                if not _same(grads, segment.grad):
                    segment.grad[r.lo:r.hi] = step.grad
                flags = 0
            else:  # the slot holds the shard's whole range; a fragment's push fills its part
                at = self.ranges_at(clock)[i].lo - self.ranges[i].lo
                link.grad[at:at + step.grad.size] = step.grad
                flags = 0
            flags |= self._flags
            if step.buffers is not None:
                link.buffers_in[:] = step.buffers
                flags |= BUFFERS_FOLLOW  # beside COMPRESSED, when the push is a blob
            link.send(PUSH_PULL, self.worker_id, clock, step.pulled_version, num_samples, loss, ahead, flags,
                      self.incarnation, step.seq)
        return Pending(lambda: self._collect(params_out, buffers_out, f"step {clock}", clock))

    def _sparse(self) -> list[_SparseLink]:
        if not self._sparse_links:
            self._sparse_links = [_SparseLink(d, self.worker_id, self._token, self._timeout_s)
                                  for d in self._directories]
        return self._sparse_links

    # Sparse calls never wait to send: a shard takes one connection's requests in order, so a pull sent behind
    # a push reads it. Answers come back in the order asked, so each call's answers are read only after every
    # earlier call's (``_queue``); a call's answers are all read even when one is a refusal, so the sockets
    # stay in step.

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list[np.ndarray | None]:
        return self._queue(self._send_pull(table, ids_per_shard, clock)).wait()

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                          grads_per_shard: list[np.ndarray], num_samples: int) -> Pending:
        return self._queue(self._send_push(table, clock, ids_per_shard, grads_per_shard, num_samples))

    def sparse_push_pull_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                               grads_per_shard: list[np.ndarray], num_samples: int,
                               pull_ids_per_shard: list[np.ndarray]) -> Pending:
        pushed = self._send_push(table, clock, ids_per_shard, grads_per_shard, num_samples)
        pulled = self._send_pull(table, pull_ids_per_shard, clock + 1)

        def read(errors: list[TransportError]) -> list[np.ndarray | None]:
            pushed(errors)  # the push's answers come first on each socket
            return pulled(errors)
        return self._queue(read)

    def _send_push(self, table, clock, ids_per_shard, grads_per_shard, num_samples):
        links = self._sparse()
        for link, ids, grads in zip(links, ids_per_shard, grads_per_shard):
            link.send(SPARSE_PUSH, table, clock, ids, grads, num_samples, self.incarnation)

        def read(errors: list[TransportError]) -> None:
            for link in links:
                try:
                    link.receive(f"push of table {table!r} step {clock}", rows=False)
                except TransportError as e:
                    errors.append(e)
        return read

    def _send_pull(self, table, ids_per_shard, clock):
        links = self._sparse()
        asked = [i for i, ids in enumerate(ids_per_shard) if len(ids)]
        for i in asked:  # every request out before any answer is read: the shards work at once
            links[i].send(SPARSE_PULL, table, clock, ids_per_shard[i], None, 0, self.incarnation)

        def read(errors: list[TransportError]) -> list[np.ndarray | None]:
            out: list[np.ndarray | None] = [None] * len(links)
            for i in asked:
                try:
                    out[i] = links[i].receive(f"pull of table {table!r}", rows=True)
                except TransportError as e:
                    errors.append(e)
            return out
        return read

    def _queue(self, read) -> Pending:
        """This call's answers, read (on ``wait()``) after those of every call before it; the first error
        of either raised once all of this call's answers are off the sockets."""
        earlier = self._sparse_pending

        def finish():
            errors: list[TransportError] = []
            if earlier is not None:
                try:
                    earlier.wait()
                except TransportError as e:
                    errors.append(e)
            result = read(errors)
            if errors:
                raise errors[0]
            return result
        self._sparse_pending = Pending(finish)
        return self._sparse_pending

    def finish(self) -> None:
        try:
            for link in self._links:
                link.send(FINISH, self.worker_id, incarnation=self.incarnation)
            for link in self._links:
                link.receive("finish")
        finally:
            self.close()
            if self._segment is not None:
                self._segment.remove()

    def close(self) -> None:
        for link in self._links + self._sparse_links:
            link.close()
        self._links, self._sparse_links, self._sparse_pending = [], [], None

    def _collect(self, params_out: np.ndarray, buffers_out: np.ndarray | None, what: str, clock: int = 0) -> None:
        errors = []
        answers = None if self._segment is None else self._segment.answers
        in_place = answers is not None and _same(params_out, answers)  # the shards' answer lies there already
        ranges = self.ranges_at(clock)  # a push's fragment of each range, or all of it
        for i, link in enumerate(self._links):
            try:  # read every reply, so no stale one is left on a socket for the next step
                version = link.receive(what)
            except TransportError as e:
                errors.append(e)
                continue
            r, at = ranges[i], ranges[i].lo - self.ranges[i].lo
            answer = None if in_place else answers[r.lo:r.hi] if answers is not None \
                else link.params[at:at + r.size]
            self.receive(i, answer, version, link.buffers_out, params_out, buffers_out, clock)
        if errors:
            raise errors[0]


def _node_id() -> str | None:
    """This actor's node: the one an in-process actor stands for (placement_info.py), else Ray's."""
    node = acting()
    if node is not None:
        return node["node_id"]
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (a test, a plain client): no node to name
        return None
