"""A packet capture of the loopback link, in Python: what an attacker reading the wire would see.

A raw ``AF_PACKET`` socket bound to ``lo`` receives every frame that crosses
loopback (each one twice: as it leaves and as it arrives), from every process
on the machine. ``LoopbackCapture`` keeps the TCP payloads with their ports, so
a test can ask what bytes crossed on a port, and whether a secret or a
protocol's plaintext appeared anywhere. Needs root (CAP_NET_RAW); ``available``
says why not otherwise.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import defaultdict

ETH_P_ALL = 0x0003
ETHERNET_HEADER = 14

#: The start of a rayps TensorChunk as protobuf serializes it: name "dense", dtype "float32". Every
#: uncompressed gradient and parameter chunk of protos/ps.proto carries it in plaintext.
TENSOR_CHUNK_PLAINTEXT = b"\n\x05dense\x12\x07float32"


def available() -> str | None:
    """Why a loopback capture cannot run here, or None when it can."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL)).close()
    except (PermissionError, OSError, AttributeError) as e:
        return f"a raw packet socket is not allowed here: {e}"
    return None


class LoopbackCapture:
    """Capture TCP payloads on ``lo`` until ``stop``; at most ``limit_bytes`` are kept."""

    def __init__(self, limit_bytes: int = 512 << 20):
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._socket.bind(("lo", 0))
        self._socket.settimeout(0.2)
        self._limit = limit_bytes
        self.by_port: dict[int, list[bytes]] = defaultdict(list)  # payloads, keyed by both their ports
        self.kept = self.frames = 0
        self._running = True
        self._thread = threading.Thread(target=self._read, name="loopback-capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            try:
                frame = self._socket.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            self.frames += 1
            parsed = _tcp_payload(frame)
            if parsed is None or self.kept >= self._limit:
                continue
            source, destination, payload = parsed
            self.by_port[source].append(payload)
            if destination != source:
                self.by_port[destination].append(payload)
            self.kept += len(payload)

    def stop(self) -> "LoopbackCapture":
        self._running = False
        self._thread.join(timeout=5)
        self._socket.close()
        return self

    def __enter__(self) -> "LoopbackCapture":
        return self

    def __exit__(self, *exc) -> None:
        if self._running:
            self.stop()

    def on_port(self, port: int) -> bytes:
        """Every payload that crossed to or from ``port``, joined."""
        return b"".join(self.by_port.get(port, ()))

    def everything(self) -> bytes:
        """Every payload captured (a payload between two captured ports appears twice; that is harmless)."""
        return b"".join(b"".join(p) for p in self.by_port.values())


def _tcp_payload(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an IPv4 or IPv6 TCP frame; None for anything else."""
    if len(frame) < ETHERNET_HEADER + 20:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    at = ETHERNET_HEADER
    if ethertype == 0x0800:
        ihl = (frame[at] & 0x0F) * 4
        if frame[at + 9] != socket.IPPROTO_TCP:
            return None
        (total,) = struct.unpack_from("!H", frame, at + 2)
        end = at + total
        at += ihl
    elif ethertype == 0x86DD:
        if frame[at + 6] != socket.IPPROTO_TCP:  # extension headers are not used on loopback here
            return None
        (length,) = struct.unpack_from("!H", frame, at + 4)
        at += 40
        end = at + length
    else:
        return None
    if len(frame) < at + 20:
        return None
    source, destination = struct.unpack_from("!HH", frame, at)
    offset = (frame[at + 12] >> 4) * 4
    return source, destination, frame[at + offset:end]
