"""The throttled loopback link: a byte pipe that holds its rate, shared by its proxies."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from concurrent import futures

import pytest

from rayps.launcher.job.throttle import ThrottledLink


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_link():
    links = []

    def make(*args, **kwargs):
        links.append(ThrottledLink(*args, **kwargs))
        return links[-1]

    yield make
    for link in links:
        link.close()


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def roundtrip(addr: str, payload: bytes) -> bytes:
    """Send `payload`, half-close, and read until the far side closes."""
    sock = _connect(addr)
    with sock:
        def send():
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        sender.join(10)
    return b"".join(chunks)


def test_bytes_go_through_unchanged_both_ways(make_link, echo):
    link = make_link(1000)
    addr = link.proxy(echo)
    assert addr.startswith("127.0.0.1:") and addr != echo
    small, big = b"hello", os.urandom(1_000_000)
    assert roundtrip(addr, small) == small
    assert roundtrip(addr, big) == big
    assert link.stats() == {"mbit_per_s": 1000, "bytes_up": len(small) + len(big),
                            "bytes_down": len(small) + len(big), "connections": 2}


def test_rate_is_enforced(make_link, echo):
    link = make_link(40)
    addr = link.proxy(echo)
    payload = os.urandom(2_000_000)
    start = time.monotonic()
    assert roundtrip(addr, payload) == payload
    elapsed = time.monotonic() - start
    # 2e6 bytes * 8 / 40e6 bit/s = 0.4 s each way; the two directions overlap.
    assert 0.35 <= elapsed < 3, f"{len(payload) / elapsed / 1e6:.2f} MB/s through a 5 MB/s link"


def test_proxies_of_one_link_share_the_bandwidth(make_link, echo):
    link = make_link(40)
    addrs = [link.proxy(echo), link.proxy(echo)]
    payload = os.urandom(1_000_000)
    results = [None, None]

    def transfer(i):
        results[i] = roundtrip(addrs[i], payload)

    threads = [threading.Thread(target=transfer, args=(i,)) for i in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start
    assert results == [payload, payload]
    # Alone, each would take 0.2 s; sharing 5 MB/s, the pair takes 0.4 s.
    assert 0.35 <= elapsed < 3
    assert link.stats()["connections"] == 2


@pytest.mark.parametrize("kwargs, name", [
    ({"mbit_per_s": 0}, "mbit_per_s"), ({"mbit_per_s": -5}, "mbit_per_s"),
    ({"mbit_per_s": "100"}, "mbit_per_s"), ({"mbit_per_s": float("nan")}, "mbit_per_s"),
    ({"mbit_per_s": 10, "latency_ms": -1}, "latency_ms"),
    ({"mbit_per_s": 10, "chunk_bytes": 0}, "chunk_bytes"),
])
def test_bad_argument_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ThrottledLink(**kwargs)


def test_close_is_idempotent_and_stops_listening(echo):
    link = ThrottledLink(100)
    addr = link.proxy(echo)
    assert roundtrip(addr, b"ping") == b"ping"
    start = time.monotonic()
    link.close()
    link.close()
    assert time.monotonic() - start < 5
    with pytest.raises(ConnectionRefusedError):
        _connect(addr).close()
    with pytest.raises(RuntimeError):
        link.proxy(echo)


def test_unreachable_target_closes_the_client(make_link, echo):
    link = make_link(100)
    # Bound but never listening: connecting to it is refused, and nobody else can take the port.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        bad = link.proxy(f"127.0.0.1:{dead.getsockname()[1]}")
        with _connect(bad) as sock:
            sock.settimeout(2)
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
    assert roundtrip(link.proxy(echo), b"still here") == b"still here"


def test_grpc_call_goes_through(make_link):
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    link = make_link(100, latency_ms=2)
    channel = grpc.insecure_channel(link.proxy(f"127.0.0.1:{port}"))
    try:
        payload = b"x" * 100_000
        assert channel.unary_unary("/t.T/Echo")(payload, timeout=5) == payload
        stats = link.stats()
        assert stats["bytes_up"] > len(payload) and stats["bytes_down"] > len(payload)
    finally:
        channel.close()
        server.stop(None)
