"""A bandwidth-limited link on loopback, to emulate a slow network on one machine.

The gradient-compression benchmark measures time to a target loss when the
workers reach the parameter-server shards over a slow link (say 100 Mbit/s).
On one machine every connection is loopback and effectively unlimited, so each
shard's address is replaced by ``link.proxy(address)``: a local TCP listener
that forwards bytes to the shard through one shared, rate-limited pipe per
direction, like a full-duplex NIC.  It is a plain byte pipe, so gRPC (HTTP/2)
goes through it unchanged.  Standard library only: asyncio on a daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

log = logging.getLogger(__name__)


def _check(name: str, value, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} ({value!r}) must be {'> 0' if name != 'latency_ms' else '>= 0'}")


class _Bucket:
    """Token bucket that may go into debt: each caller reserves its bytes, then
    sleeps off the debt, so concurrent connections are served in arrival order
    and the long-run rate never exceeds ``rate`` whatever their number."""

    def __init__(self, rate: float, capacity: float):
        self.rate, self.capacity = rate, capacity
        self.tokens, self.stamp = capacity, time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class ThrottledLink:
    """A link of `mbit_per_s` megabits per second (1 Mbit = 1e6 bits) shared by every proxy made from it, in each direction separately (like a full-duplex NIC), with an optional one-way latency added to every chunk."""

    def __init__(self, mbit_per_s: float, latency_ms: float = 0.0, chunk_bytes: int = 16384):
        _check("mbit_per_s", mbit_per_s, lambda v: v > 0)
        _check("latency_ms", latency_ms, lambda v: v >= 0)
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes ({chunk_bytes!r}) must be an int > 0")
        self.mbit_per_s, self._latency, self._chunk = mbit_per_s, latency_ms / 1e3, chunk_bytes
        rate = mbit_per_s * 1e6 / 8
        # About one chunk (or 1 ms of traffic) of burst: enough to keep the pipe
        # busy, small enough that short transfers cannot beat the configured rate.
        capacity = max(chunk_bytes, rate * 1e-3)
        self._buckets = {"bytes_up": _Bucket(rate, capacity), "bytes_down": _Bucket(rate, capacity)}
        self._counts = {"bytes_up": 0, "bytes_down": 0, "connections": 0}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock, self._closed = threading.Lock(), False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="throttled-link", daemon=True)
        self._thread.start()

    def proxy(self, target: str) -> str:
        """Start a TCP listener on 127.0.0.1 port 0 that forwards every connection to `target` ("host:port") through this link; return "127.0.0.1:<bound port>"."""
        host, _, port = target.rpartition(":")
        host, port = host.strip("[]") or "127.0.0.1", int(port)
        with self._lock:
            if self._closed:
                raise RuntimeError("ThrottledLink is closed")
            future = asyncio.run_coroutine_threadsafe(self._listen(host, port), self._loop)
        return f"127.0.0.1:{future.result(timeout=10)}"

    def stats(self) -> dict:
        """{"mbit_per_s": ..., "bytes_up": client->target bytes forwarded, "bytes_down": target->client bytes, "connections": number accepted}"""
        return {"mbit_per_s": self.mbit_per_s, **self._counts}

    def close(self) -> None:
        """Stop every listener and connection and the background thread; idempotent; bounded in time (join with a timeout)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        except Exception:  # a stuck shutdown must not hang the caller; the thread is a daemon
            log.exception("ThrottledLink: shutdown did not finish cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _listen(self, host: str, port: int) -> int:
        server = await asyncio.start_server(lambda r, w: self._serve(r, w, host, port), "127.0.0.1", 0)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r, client_w, host: str, port: int) -> None:
        self._counts["connections"] += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(client_w)
        writers = [client_w]
        try:
            try:
                target_r, target_w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                log.warning("ThrottledLink: cannot reach %s:%s (%s); closing the client", host, port, e)
                return
            writers.append(target_w)
            self._writers.add(target_w)
            await asyncio.gather(self._pump(client_r, target_w, "bytes_up", writers),
                                 self._pump(target_r, client_w, "bytes_down", writers))
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection's bug reach the loop
            log.exception("ThrottledLink: connection to %s:%s failed", host, port)
        finally:
            for writer in writers:
                writer.close()
                self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(self, reader, writer, key: str, writers: list) -> None:
        loop = asyncio.get_running_loop()
        # Latency delays delivery without stalling the reader, so it does not cut
        # throughput: chunks are scheduled in order and the bucket bounds how many
        # are in flight.
        send = (lambda fn, *a: loop.call_later(self._latency, fn, *a)) if self._latency else (lambda fn, *a: fn(*a))
        try:
            while data := await reader.read(self._chunk):
                await self._buckets[key].take(len(data))
                send(writer.write, data)
                self._counts[key] += len(data)
                await writer.drain()
            # Half-close, so a peer that reads until EOF still sends its answer back.
            send(writer.write_eof if writer.can_write_eof() else writer.close)
            await asyncio.sleep(self._latency)  # let the delayed chunks out before _serve closes
        except (ConnectionError, OSError) as e:
            log.debug("ThrottledLink: %s pipe broke (%s); dropping both sides", key, e)
            for w in writers:  # a reset on one side must not leave the other open forever
                w.transport.abort()
