"""The same-node server (ps/transport/shm_server.py) driven on its own wire (protos/shm_wire.py), for tests.

A real ``ParameterShard`` is served by ``start_shm_server`` on an event-loop
thread (tests/grpc_fixtures.py ``LoopThread``), as a shard actor serves it. A
``WireClient`` speaks the wire by hand: the HELLO and the token, then one
``REQUEST`` per call with every field as the test gives it, the gradient
written into the worker's slot first, and the REPLY read back whole. So a test
can send what no ``ShmShardClient`` would: clock 0, unknown flag bits, a
loss of Inf, another worker's id.
"""

from __future__ import annotations

import mmap
import os
import socket
from dataclasses import dataclass

import numpy as np

from rayps.protos.shm_wire import (HELLO, LAYOUT, MESSAGE, OK, PUSH_PULL, REPLY, REQUEST, SPARSE, SPARSE_PULL,
                                   SPARSE_PUSH, SPARSE_ROWS, STATUSES, SlotLayout, segment_name)
from rayps.ps.shard import ParameterShard
from rayps.ps.transport.shm_server import ShmShardServer, start_shm_server

from tests.grpc_fixtures import LoopThread

WIRE_TIMEOUT = 5.0  # every read's deadline: a bug fails a test, never hangs the suite


@dataclass
class Reply:
    """One REPLY: the status by name, and the rest of its fields."""

    status: str
    outcome: int = 0
    version: int = 0
    clock: int = 0
    seq: int = 0
    message: str = ""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = sock.recv(n - len(out))
        if not part:
            raise ConnectionError(f"the shard closed the connection after {len(out)} of {n} bytes")
        out += part
    return out


def read_reply(sock: socket.socket) -> Reply:
    status, outcome, version, clock, seq = REPLY.unpack(_recv_exactly(sock, REPLY.size))
    (length,) = MESSAGE.unpack(_recv_exactly(sock, MESSAGE.size))
    message = _recv_exactly(sock, length).decode() if length else ""
    return Reply(STATUSES.get(status, str(status)), outcome, version, clock, seq, message)


class WireClient:
    """One worker's connection to a shm server, every field of every request the caller's."""

    def __init__(self, server: ShmShardServer, worker_id: int, token: str, size: int, buffers: int = 0):
        self.worker_id = worker_id
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WIRE_TIMEOUT)
        self.sock.connect(server.socket_path)
        raw = token.encode()
        self.sock.sendall(HELLO.pack(len(raw), worker_id) + raw)
        head = _recv_exactly(self.sock, REPLY.size)
        if head[0] != OK:  # a refusal is a REPLY and its message; the connection is closed after it
            (length,) = MESSAGE.unpack(_recv_exactly(self.sock, MESSAGE.size))
            self.refused = Reply(STATUSES[head[0]], message=_recv_exactly(self.sock, length).decode())
            self.sock.close()
            return
        self.refused = None
        _, params, nbuffers, offset = LAYOUT.unpack(head + _recv_exactly(self.sock, LAYOUT.size - REPLY.size))
        assert (params, nbuffers) == (size, buffers)
        fd = os.open(os.path.join(server.directory, segment_name(worker_id)), os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        lay = SlotLayout(size, buffers)
        self.grad = np.ndarray(size, np.float32, self._map, offset + lay.grad_at)
        self.params = np.ndarray(size, np.float32, self._map, offset + lay.params_at)

    def call(self, op: int, grad=None, *, flags: int = 0, worker_id: int | None = None, clock: int = 0,
             pulled: int = 0, samples: int = 0, loss: float = 0.0, ahead: int = 0, incarnation: int = 0,
             seq: int = 0) -> Reply:
        """Send one REQUEST (``grad`` into the slot first) and read its REPLY."""
        if grad is not None:
            self.grad[:] = grad
        who = self.worker_id if worker_id is None else worker_id
        self.sock.sendall(REQUEST.pack(op, flags, who, clock, pulled, samples, loss, ahead, incarnation, seq))
        return read_reply(self.sock)

    def push(self, grad, clock: int, **fields) -> Reply:
        return self.call(PUSH_PULL, grad, clock=clock, **fields)

    def sparse_pull(self, table: str, ids, clock: int = 0, incarnation: int = 0) -> tuple[Reply, np.ndarray | None]:
        name, ids = table.encode(), np.asarray(ids, "<i8")
        self.sock.sendall(REQUEST.pack(SPARSE_PULL, 0, self.worker_id, clock, 0, 0, 0.0, 0, incarnation, 0)
                          + SPARSE.pack(len(name), 0, len(ids)) + name + ids.tobytes())
        reply = read_reply(self.sock)
        if reply.status != "OK":
            return reply, None
        count, dim, _ = SPARSE_ROWS.unpack(_recv_exactly(self.sock, SPARSE_ROWS.size))
        return reply, np.frombuffer(_recv_exactly(self.sock, count * dim * 4), "<f4").reshape(count, dim)

    def sparse_push(self, table: str, ids, grads, clock: int, samples: int = 1, incarnation: int = 0) -> Reply:
        name, ids = table.encode(), np.asarray(ids, "<i8")
        grads = np.asarray(grads, "<f4").reshape(len(ids), -1)
        self.sock.sendall(REQUEST.pack(SPARSE_PUSH, 0, self.worker_id, clock, 0, samples, 0.0, 0, incarnation, 0)
                          + SPARSE.pack(len(name), grads.shape[1], len(ids)) + name + ids.tobytes() + grads.tobytes())
        return read_reply(self.sock)

    def close(self) -> None:
        self.sock.close()
        if self.refused is None:
            self.grad = self.params = None  # views first: a mapping with live views cannot close
            self._map.close()


@dataclass
class ShmServed:
    shard: ParameterShard
    server: ShmShardServer
    token: str

    def connect(self, worker_id: int, token: str | None = None) -> WireClient:
        return WireClient(self.server, worker_id, self.token if token is None else token, self.shard.size,
                          self.shard.buffer_size)


def serve_shm(loop: LoopThread, shard: ParameterShard, token: str, root: str) -> ShmServed:
    """``shard`` behind a real shm server in ``root`` on ``loop``; stop it with ``stop_shm``."""
    return ShmServed(shard, loop.run(start_shm_server(shard, token, root)), token)


def stop_shm(loop: LoopThread, served: ShmServed) -> None:
    loop.run(served.server.stop())
