"""Load on one shard: 1 to 64 clients stepping as fast as they can, with no compute between steps.

    python3 benchmarks/load.py [--clients 1,2,4,8,16,32,64] [--seconds 3] [--size 1000]
                               [--transports grpc,shm] [--rounds 1] [--json FILE]

One ``ParameterShard`` (asp, SGD, ``--size`` float32, as many worker ids as
the largest client count) serves from its own process, spawned, so its CPU
time and resident memory are measured apart from the clients'. For each
client count N, N clients register as workers 0..N-1, then each steps in a
loop for ``--seconds``: it pushes a small constant gradient, with the clock,
seq and pulled version a worker sends, and reads the parameters the shard
answers with. Every client reaches the shard the way a worker does:

- grpc: one persistent ``Step`` stream per client, chunks encoded and parsed
  by protos/codec.py, as ``GrpcShardClient`` does (ps/transport/grpc_client.py);
- shm: the gradient into the client's slot of the shard's segment, one
  ``PUSH_PULL`` request on its Unix socket, the parameters copied out of the
  slot, as ``ShmShardClient`` does (ps/transport/shm_client.py). That client
  blocks on its socket, so it is spoken here on asyncio instead: 64 of them
  would need 64 threads.

All clients are coroutines on one event loop in this process: 64 client
processes would swamp a 2-core machine, and their startup would dwarf 3 s of
load. One client process and one server process share the machine, so the
CPU columns say which side ran out of core.

Per N: pushes per second (all clients), p50 and p99 latency of one step (push
sent to parameters received), errors (a non-OK status, a push not APPLIED, a
broken stream: each ends its client), the shard's version before and after
(under asp every applied push is one update, so the difference must equal the
pushes), and the server process's RSS before the clients connect and after
they close. CPU % is of one core over the timed window, for the server, the
clients, and everything else the machine ran meanwhile (its busy time less
those two): a row measured while others worked says so. Exit status 1 when
any row had an error or a version that is not its pushes.

``--rounds K`` runs the client counts K times over against the same server:
a soak, that tells the memory a server keeps once it has carried its peak
load from memory that grows with every push or every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import multiprocessing as mp
import os
import resource
import secrets
import subprocess
import time
from multiprocessing.connection import wait

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: not an INFO line per closed connection

import grpc
import numpy as np
import psutil

from rayps.protos import ps_pb2, ps_pb2_grpc
from rayps.protos.codec import Assembler, encode_chunks, parse_chunk
from rayps.protos.names import SERVICE, TENSOR
from rayps.protos.shm_wire import (HELLO, LAYOUT, MESSAGE, OK, PUSH_PULL, REGISTER, REPLY, REQUEST,
                                   STATUSES, SlotLayout, segment_name)
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.shard import ParameterShard
from rayps.ps.transport.grpc_client import open_channel
from rayps.ps.transport.grpc_security import TokenAuth
from rayps.ps.transport.grpc_server import start_grpc_server
from rayps.ps.transport.shm_server import start_shm_server

CLIENTS = (1, 2, 4, 8, 16, 32, 64)
SECONDS, SIZE = 3.0, 1000
TRANSPORTS = ("grpc", "shm")
CALL_TIMEOUT_S = 30.0  # every call's deadline: a stuck shard fails the run, never hangs it


class LoadError(Exception):
    """A client's step that did not come back OK and APPLIED."""


# ---- the server process -------------------------------------------------------------------

def _shard(size: int, workers: int):
    return ParameterShard(0, np.zeros(size, np.float32), list(range(workers)), OptimizerConfig(name="sgd", lr=1e-3),
                          ScheduleConfig(), ConsistencyConfig(mode="asp"))


async def _serve(conn, transport: str, size: int, workers: int, token: str) -> None:
    shard = _shard(size, workers)
    if transport == "grpc":
        server = await start_grpc_server(shard, token)
        conn.send(server.address)
        stop = lambda: server.stop(0)  # noqa: E731
    else:
        server = await start_shm_server(shard, token)
        conn.send(server.directory)
        stop = server.stop
    loop = asyncio.get_running_loop()
    # The pipe is read on a thread; the counters are read on the loop, between the shard's turns.
    while await loop.run_in_executor(None, conn.recv) != "stop":
        stats = await shard.stats()
        conn.send({key: stats[key] for key in ("version", "duplicates", "rejected")})
    await stop()


def serve_main(conn, transport: str, size: int, workers: int, token: str) -> None:
    asyncio.run(_serve(conn, transport, size, workers, token))


class ServerProcess:
    """The shard's process, its address, and what it reports: its counters, CPU seconds and RSS."""

    def __init__(self, transport: str, size: int, workers: int):
        self.token = secrets.token_urlsafe(24)
        ctx = mp.get_context("spawn")  # a fresh interpreter: none of this process's memory or threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=serve_main, args=(child, transport, size, workers, self.token),
                                    daemon=True)
        self._process.start()
        if self._conn not in wait([self._conn, self._process.sentinel], timeout=120):  # its address, or its end
            self.close()
            raise RuntimeError(f"the server process did not start (exit code {self._process.exitcode})")
        self.where = self._conn.recv()
        self._ps = psutil.Process(self._process.pid)

    def counters(self) -> dict:
        self._conn.send("stats")
        return self._conn.recv()

    def cpu_s(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def rss_mb(self) -> float:
        return self._ps.memory_info().rss / 1e6

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send("stop")
            except OSError:
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)


# ---- the clients -------------------------------------------------------------------------

class GrpcClient:
    """One worker on one persistent ``Step`` stream, as GrpcShardClient drives it."""

    def __init__(self, address: str, token: str, worker_id: int, size: int, stream_s: float):
        self.address, self.token, self.worker_id, self.size, self.stream_s = address, token, worker_id, size, stream_s
        self.grad = np.full(size, 1e-6, np.float32)
        self.params = np.empty(size, np.float32)

    async def open(self) -> None:
        self.metadata = TokenAuth(self.token).metadata
        self.channel = open_channel(self.address, None)
        reply = await ps_pb2_grpc.ParameterServerStub(self.channel).Register(
            ps_pb2.RegisterRequest(worker_id=self.worker_id), timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        # where this worker carries on: a later client count registers the same worker ids again
        self.clock, self.seq, self.version = reply.clock, reply.seq, reply.version
        self.assembler = Assembler(TENSOR, self.size, self.params)
        self.stream = self.channel.stream_stream(f"/{SERVICE}/Step", request_serializer=None,
                                                 response_deserializer=parse_chunk)(
            timeout=self.stream_s, metadata=self.metadata)

    async def step(self) -> None:
        self.clock += 1
        self.seq += 1
        for chunk in encode_chunks(TENSOR, self.grad, worker_id=self.worker_id, clock=self.clock, seq=self.seq,
                                   pulled_version=self.version, num_samples=1):
            await self.stream.write(chunk)
        self.assembler.reset()
        outcome = None
        while True:
            chunk = await self.stream.read()
            if chunk is grpc.aio.EOF:
                raise LoadError("the shard ended the Step stream")
            if chunk.offset == 0:
                self.version = chunk.version
                outcome = chunk.push.outcome if chunk.HasField("push") else None
            if self.assembler.add(chunk):
                break
        if outcome != ps_pb2.PushReply.APPLIED:
            raise LoadError(f"step {self.clock}: outcome {outcome}, not APPLIED")

    async def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.cancel()
        if getattr(self, "channel", None) is not None:
            await self.channel.close()


class ShmClient:
    """One worker on its slot and its socket, as ShmShardClient steps (protos/shm_wire.py), on asyncio."""

    def __init__(self, directory: str, token: str, worker_id: int, size: int, stream_s: float):
        self.directory, self.token, self.worker_id, self.size = directory, token, worker_id, size
        self.grad = np.full(size, 1e-6, np.float32)
        self.params = np.empty(size, np.float32)
        self.writer = self.map = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(os.path.join(self.directory, "socket"))
        raw = self.token.encode()
        self.writer.write(HELLO.pack(len(raw), self.worker_id) + raw)
        head = await self._read(REPLY.size)
        if head[0] != OK:  # a refusal is a REPLY; the layout is 16 bytes longer
            await self._answer(head)
        _, params, _, offset = LAYOUT.unpack(head + await self._read(LAYOUT.size - REPLY.size))
        if params != self.size:
            raise LoadError(f"the shard holds {params} parameters, not {self.size}")
        fd = os.open(os.path.join(self.directory, segment_name(self.worker_id)), os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        lay = SlotLayout(self.size, 0)
        self.grad_slot = np.ndarray(self.size, np.float32, buffer=self.map, offset=offset + lay.grad_at)
        self.params_slot = np.ndarray(self.size, np.float32, buffer=self.map, offset=offset + lay.params_at)
        self._send(REGISTER)
        _, self.version, self.clock, self.seq = await self._answer()

    def _send(self, op: int, clock: int = 0, pulled: int = 0, samples: int = 0, seq: int = 0) -> None:
        self.writer.write(REQUEST.pack(op, 0, self.worker_id, clock, pulled, samples, 0.0, 0, 0, seq))

    async def _read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), CALL_TIMEOUT_S)

    async def _answer(self, head: bytes | None = None) -> tuple[int, int, int, int]:
        """(outcome, version, clock, seq) of the next reply; a refusal raises LoadError with the shard's message."""
        status, outcome, version, clock, seq = REPLY.unpack(head or await self._read(REPLY.size))
        (length,) = MESSAGE.unpack(await self._read(MESSAGE.size))
        message = (await self._read(length)).decode() if length else ""
        if status != OK:
            raise LoadError(f"{STATUSES.get(status, status)}: {message}")
        return outcome, version, clock, seq

    async def step(self) -> None:
        self.clock += 1
        self.seq += 1
        self.grad_slot[:] = self.grad
        self._send(PUSH_PULL, self.clock, self.version, 1, self.seq)
        outcome, self.version, _, _ = await self._answer()
        if outcome != 0:  # protos/shm_wire.py: OUTCOMES[0] is "applied"
            raise LoadError(f"step {self.clock}: outcome {outcome}, not applied")
        self.params[:] = self.params_slot

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.grad_slot = self.params_slot = None  # views first: a mapping with live views cannot close
        if self.map is not None:
            self.map.close()


CLIENT_CLASSES = {"grpc": GrpcClient, "shm": ShmClient}


# ---- one client count ---------------------------------------------------------------------

async def _steps(client, deadline: float) -> tuple[list[float], str | None]:
    """Step until the deadline: each step's seconds, and the error that ended the loop early (None: none)."""
    latencies = []
    try:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await client.step()
            latencies.append(time.perf_counter() - began)
    except Exception as e:  # any failure is the load's result, not the tool's: counted and shown
        code = getattr(e, "code", None)
        return latencies, f"worker {client.worker_id}: {type(e).__name__}: " + (
            f"{code().name}: {e.details()}" if callable(code) else str(e))
    return latencies, None


async def _load(transport: str, server: "ServerProcess", clients: int, seconds: float, size: int) -> dict:
    made = [CLIENT_CLASSES[transport](server.where, server.token, w, size, seconds + 60) for w in range(clients)]
    try:
        await asyncio.gather(*(c.open() for c in made))  # every client registered before the clock starts
        cpu = _cpu_now(server)
        began = time.perf_counter()
        ran = await asyncio.gather(*(_steps(c, began + seconds) for c in made))
        elapsed = time.perf_counter() - began
        cpu = [(now - then) / elapsed * 100 for now, then in zip(_cpu_now(server), cpu)]
    finally:
        await asyncio.gather(*(c.close() for c in made), return_exceptions=True)
    latencies = np.array([t for got, _ in ran for t in got])
    errors = [e for _, e in ran if e is not None]
    return {"seconds": round(elapsed, 3), "pushes": int(latencies.size), "pushes_per_s": latencies.size / elapsed,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies.size else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies.size else None,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            # the machine's busy time less the server's and the clients': what other work took meanwhile
            "server_cpu_pct": cpu[0], "client_cpu_pct": cpu[1], "other_cpu_pct": max(0.0, cpu[2] - cpu[0] - cpu[1])}


def _cpu_now(server: "ServerProcess") -> tuple[float, float, float]:
    """CPU seconds so far: the server process's, this process's, the whole machine's."""
    return server.cpu_s(), _cpu_s(), _machine_cpu_s()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: gRPC's poller too
    return usage.ru_utime + usage.ru_stime


def _machine_cpu_s() -> float:
    """CPU seconds every process on the machine used so far (and the hypervisor took from it: steal)."""
    t = psutil.cpu_times()
    return t.user + t.system + sum(getattr(t, name, 0.0) for name in ("nice", "irq", "softirq", "steal"))


def load_rows(transports=TRANSPORTS, clients=CLIENTS, seconds: float = SECONDS, size: int = SIZE,
              progress: bool = False) -> list[dict]:
    """One row per transport and client count, each transport against a shard process of its own."""
    return asyncio.run(_rows(transports, clients, seconds, size, progress))  # one loop: gRPC's aio binds to it


async def _rows(transports, clients, seconds: float, size: int, progress: bool) -> list[dict]:
    rows = []
    for transport in transports:
        server = ServerProcess(transport, size, max(clients))
        try:
            for n in clients:
                rows.append(await _row(server, transport, n, seconds, size))
                if progress:
                    r = rows[-1]
                    print(f"  {transport}, {n} clients: {r['pushes_per_s']:,.0f} pushes/s, p50 {r['p50_ms'] or 0:.2f}"
                          f" ms, p99 {r['p99_ms'] or 0:.2f} ms, {r['errors']} errors", flush=True)
        finally:
            server.close()
    return rows


async def _row(server: ServerProcess, transport: str, n: int, seconds: float, size: int) -> dict:
    before, rss_before = server.counters(), server.rss_mb()
    got = await _load(transport, server, n, seconds, size)
    after, rss_after = server.counters(), server.rss_mb()
    return {"transport": transport, "clients": n, **got,
            "version_before": before["version"], "version_after": after["version"],
            "rejected": after["rejected"], "duplicates": after["duplicates"] - before["duplicates"],
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "rss_growth_mb": rss_after - rss_before}


# ---- the table ------------------------------------------------------------------------------

def load_table(rows: list[dict]) -> str:
    lines = ["| transport | clients | pushes/s | p50 ms | p99 ms | errors | version = pushes |"
             " server CPU % | client CPU % | others' CPU % | server RSS before → after MB | RSS growth MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        counted = r["version_after"] - r["version_before"]
        check = "yes" if counted == r["pushes"] else f"no: {counted:,} updates for {r['pushes']:,} pushes"
        latency = f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f}" if r["pushes"] else "– | –"
        lines.append(f"| {r['transport']} | {r['clients']} | {r['pushes_per_s']:,.0f} | {latency} | {r['errors']} |"
                     f" {check} | {r['server_cpu_pct']:.0f} | {r['client_cpu_pct']:.0f} | {r['other_cpu_pct']:.0f} |"
                     f" {r['rss_before_mb']:.1f} → {r['rss_after_mb']:.1f} | {r['rss_growth_mb']:+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="load per client count")
    parser.add_argument("--size", type=int, default=SIZE, help="float32 parameters in the shard")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: grpc, shm")
    parser.add_argument("--rounds", type=int, default=1, help="run the client counts this many times over")
    parser.add_argument("--json", help="also write the rows, with the command, commit and date, to this file")
    args = parser.parse_args(argv)
    clients = [int(n) for n in args.clients.split(",")] * args.rounds
    transports = [t.strip() for t in args.transports.split(",")]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not clients or min(clients) < 1:
        parser.error(f"transports must be among {', '.join(TRANSPORTS)}, client counts and rounds >= 1")
    began = time.gmtime()
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores (load average {', '.join(f'{x:.1f}' for x in load)}), shared by the server and the clients;"
          f" {args.size} float32, asp, {args.seconds:g} s per client count", flush=True)
    rows = load_rows(transports, clients, args.seconds, args.size, progress=True)
    print(load_table(rows))
    if args.json:
        given = [f"--{k} {v}" for k, v in vars(args).items() if k != "json" and v != parser.get_default(k)]
        command = " ".join(["python3", "benchmarks/load.py", *given])  # what made the rows (not where they went)
        record = {"command": command, "commit": _commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", began),
                  "cores": os.cpu_count(), "load_average_at_start": load, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0 if all(r["errors"] == 0 and r["version_after"] - r["version_before"] == r["pushes"] for r in rows) else 1


def _commit() -> str | None:
    """The checkout's ``git rev-parse --short HEAD``, as psctl bench records it (launcher/bench/runner.py)."""
    done = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
