"""How fast the gRPC transport moves a tensor, next to raw gRPC on the same machine.

    python3 benchmarks/grpc_transport.py [--mb 100] [--reps 7] [--chunk-bytes N]

The shards serve from a separate process (spawned, so the server never shares
the client's GIL): one of ``--mb`` MB of float32 with SGD under asp, and one of
10k floats for latency. Every figure is the median of ``--reps`` runs:

- push: the ``Push`` RPC, the whole tensor client-streamed, then checked and
  applied: the SGD step included. The server's part alone is timed in this
  process too, and the push without it is shown for the transport's own rate;
- pull: the ``Pull`` RPC (clock 0: no wait), server-streamed into a preallocated buffer;
- step: ``GrpcShardClient.push_pull`` on the persistent ``Step`` stream, both ways;
- latency: push_pull of the small model, and a tiny unary call (``Stats``);
- raw: gRPC alone, bytes messages of the same chunk size with identity
  serializers, no protocol and no copies, both ways: the ceiling.

GB/s counts the tensor's bytes once per direction (step: twice). CPU ms are
the user + system time each process spent (all its threads): on a busy machine
they show where the work is when wall times wander.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time

import numpy as np

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not an INFO line per closed connection
TOKEN = "bench-token"
SMALL = 10_000
RAW_SERVICE = "bench.Raw"


# ---- the server process ---------------------------------------------------------------

def _shard(shard_id: int, size: int, workers: list[int]):
    from rayps.ps.core.consistency import ConsistencyConfig
    from rayps.ps.core.optimizers import OptimizerConfig
    from rayps.ps.core.schedules import ScheduleConfig
    from rayps.ps.shard import ParameterShard

    return ParameterShard(shard_id, np.zeros(size, np.float32), workers, OptimizerConfig(name="sgd", lr=1e-3),
                          ScheduleConfig(), ConsistencyConfig(mode="asp"))


def _raw_handler(payload: bytes, count: int):
    import grpc

    async def push(requests, context):
        n = 0
        async for message in requests:
            n += len(message)
        return n.to_bytes(8, "little")

    async def pull(request, context):
        for _ in range(count):
            yield payload

    return grpc.method_handlers_generic_handler(RAW_SERVICE, {
        "Push": grpc.stream_unary_rpc_method_handler(push),
        "Pull": grpc.unary_stream_rpc_method_handler(pull),
    })


async def _serve(conn, size: int, chunk_bytes: int) -> None:
    import grpc

    from rayps.protos.names import SERVER_OPTIONS
    from rayps.ps.transport.grpc_server import start_grpc_server

    big = await start_grpc_server(_shard(0, size, [0, 1]), TOKEN, chunk_bytes=chunk_bytes)
    small = await start_grpc_server(_shard(1, SMALL, [0]), TOKEN, chunk_bytes=chunk_bytes)
    raw = grpc.aio.server(options=SERVER_OPTIONS)
    raw.add_generic_rpc_handlers((_raw_handler(b"\0" * chunk_bytes, -(-size * 4 // chunk_bytes)),))
    raw_port = raw.add_insecure_port("127.0.0.1:0")
    await raw.start()
    conn.send((big.address, small.address, f"127.0.0.1:{raw_port}"))
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, conn.recv) != "stop":  # asked for its CPU time
        conn.send(cpu_s())
    for server in (big, small):
        await server.stop(0)
    await raw.stop(0)


def serve_main(conn, size: int, chunk_bytes: int) -> None:
    asyncio.run(_serve(conn, size, chunk_bytes))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the client side ------------------------------------------------------------------

class Timer:
    """Medians of wall time and of both processes' CPU time over repetitions of calls.

    The calls take turns, one repetition of each per round, so a burst of load
    from elsewhere on the machine falls on all of them rather than on one.
    """

    def __init__(self, server_conn=None):
        self._conn = server_conn

    def _server_cpu_s(self) -> float:
        if self._conn is None:
            return 0.0
        self._conn.send("cpu")
        return self._conn.recv()

    def __call__(self, calls: dict, reps: int) -> dict[str, tuple[float, float, float]]:
        for fn in calls.values():
            fn()  # warm up: first-touch page faults, channel setup
        rows = {name: [] for name in calls}
        for _ in range(reps):
            for name, fn in calls.items():
                server, client, began = self._server_cpu_s(), cpu_s(), time.perf_counter()
                fn()
                wall = time.perf_counter() - began
                rows[name].append((wall, cpu_s() - client, self._server_cpu_s() - server))
        return {name: tuple(statistics.median(column) for column in zip(*got)) for name, got in rows.items()}


class LoopThread:
    """An event loop on its own thread, as GrpcShardClient drives its calls."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


# Push and Pull as GrpcShardClient sends and reads its Step stream: chunks
# encoded by protos.codec (payload copied once), parsed with the payload as a view.

async def _push(channel, grad, clock, chunk_bytes, metadata):
    from rayps.protos import ps_pb2
    from rayps.protos.codec import encode_chunks
    from rayps.protos.names import SERVICE, TENSOR

    call = channel.stream_unary(f"/{SERVICE}/Push", request_serializer=None,
                                response_deserializer=ps_pb2.PushReply.FromString)
    reply = await call(encode_chunks(TENSOR, grad, chunk_bytes, worker_id=1, clock=clock, num_samples=1),
                       metadata=metadata, timeout=60)
    assert reply.outcome == ps_pb2.PushReply.APPLIED, reply


async def _pull(channel, out, metadata):
    from rayps.protos import ps_pb2
    from rayps.protos.codec import Assembler, parse_chunk
    from rayps.protos.names import SERVICE, TENSOR

    call = channel.unary_stream(f"/{SERVICE}/Pull", request_serializer=ps_pb2.PullRequest.SerializeToString,
                                response_deserializer=parse_chunk)
    assembler = Assembler(TENSOR, out.size, out)
    done = False
    async for chunk in call(ps_pb2.PullRequest(worker_id=1, clock=0), metadata=metadata, timeout=60):
        done = assembler.add(chunk)
    assert done, "the pull ended before the whole tensor came"


async def _raw_push(channel, payload: bytes, count: int) -> None:
    call = channel.stream_unary(f"/{RAW_SERVICE}/Push")
    reply = await call(iter([payload] * count), timeout=60)
    assert int.from_bytes(reply, "little") == len(payload) * count


async def _raw_pull(channel, count: int) -> None:
    n = 0
    async for _ in channel.unary_stream(f"/{RAW_SERVICE}/Pull")(b"", timeout=60):
        n += 1
    assert n == count


def measure(size: int, chunk_bytes: int, reps: int, addresses, timed: "Timer") -> dict[str, tuple]:
    from rayps.ps.transport.grpc_client import GrpcShardClient
    from rayps.ps.transport.grpc_security import TokenAuth
    from rayps.ps.core.partition import partition

    big, small, raw = addresses
    nbytes = size * 4
    count = -(-nbytes // chunk_bytes)
    metadata = TokenAuth(TOKEN).metadata
    grad = np.full(size, 1e-3, np.float32)
    out = np.empty(size, np.float32)
    loop = LoopThread()
    channel = loop.run(_open(big))
    raw_channel = loop.run(_open(raw))
    client = GrpcShardClient(0, [big], partition(size, 1), TOKEN, chunk_bytes=chunk_bytes)
    client.register(out)
    payload = b"\1" * chunk_bytes
    clock, step = iter(range(1, 1 << 30)), iter(range(1, 1 << 30))
    results = timed({
        "push": lambda: loop.run(_push(channel, grad, next(clock), chunk_bytes, metadata)),
        "pull": lambda: loop.run(_pull(channel, out, metadata)),
        "step": lambda: client.push_pull(next(step), grad, out, 1, 0.0),
        "raw push": lambda: loop.run(_raw_push(raw_channel, payload, count)),
        "raw pull": lambda: loop.run(_raw_pull(raw_channel, count)),
    }, reps)
    client.finish()
    loop.run(channel.close())
    loop.run(raw_channel.close())
    loop.close()

    client = GrpcShardClient(0, [small], partition(SMALL, 1), TOKEN, chunk_bytes=chunk_bytes)
    small_grad, small_out = np.full(SMALL, 1e-3, np.float32), np.empty(SMALL, np.float32)
    client.register(small_out)
    step = iter(range(1, 1 << 30))
    per_call = timed({
        "small step": lambda: [client.push_pull(next(step), small_grad, small_out, 1, 0.0) for _ in range(100)],
        "stats": lambda: [client.stats() for _ in range(100)],
    }, reps)
    client.finish()
    results.update({name: tuple(t / 100 for t in got) for name, got in per_call.items()})
    return results


async def _open(address):
    from rayps.ps.transport.grpc_client import open_channel

    return open_channel(address, None)


def shard_alone(size: int, chunk_bytes: int, reps: int) -> dict[str, tuple]:
    """The server's own work per push and per pull, without any transport."""
    from rayps.protos.codec import encode_chunks
    from rayps.protos.names import TENSOR
    from rayps.ps.core.step import Step

    timed = Timer()
    loop = asyncio.new_event_loop()
    shard = _shard(0, size, [0])
    grad = np.full(size, 1e-3, np.float32)
    clock = iter(range(1, 1 << 30))
    encode = functools.partial(encode_chunks, TENSOR, chunk_bytes=chunk_bytes)
    results = timed({
        "server's push alone (finite check + SGD step)":
            lambda: loop.run_until_complete(shard.push(Step(0, next(clock), grad, 0, 1, 0.0))),
        "server's pull alone (encode the chunks)":
            lambda: loop.run_until_complete(shard.pull_for(0, 0, take=lambda params: list(encode(params)))),
    }, reps)
    loop.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="the big tensor's size in MB (1e6 bytes)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--chunk-bytes", type=int, default=None, help="default: the protocol's CHUNK_BYTES")
    args = parser.parse_args()
    from rayps.protos.codec import CHUNK_BYTES

    chunk_bytes = args.chunk_bytes or CHUNK_BYTES
    size = int(args.mb * 1e6) // 4
    nbytes = size * 4

    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    server = ctx.Process(target=serve_main, args=(child, size, chunk_bytes), daemon=True)
    server.start()
    try:
        if not conn.poll(60):
            raise RuntimeError("the server process did not start within 60 s")
        addresses = conn.recv()
        results = measure(size, chunk_bytes, args.reps, addresses, Timer(conn))
    finally:
        conn.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    alone = shard_alone(size, chunk_bytes, args.reps)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores (load average {load}); tensor {nbytes / 1e6:g} MB; chunk {chunk_bytes} bytes;"
          f" median of {args.reps}\n")
    print("| what | ms | GB/s | client CPU ms | server CPU ms |")
    print("|---|---|---|---|---|")
    for name in ("push", "pull", "step", "raw push", "raw pull"):
        wall, client, server = results[name]
        moved = 2 * nbytes if name == "step" else nbytes
        print(f"| {name} {nbytes / 1e6:g} MB | {wall * 1e3:.1f} | {moved / wall / 1e9:.2f} | {client * 1e3:.0f} |"
              f" {server * 1e3:.0f} |")
    for name, (wall, cpu, _) in alone.items():
        print(f"| {name} {nbytes / 1e6:g} MB | {wall * 1e3:.1f} | | {cpu * 1e3:.0f} | |")
    transport_s = results["push"][0] - alone["server's push alone (finite check + SGD step)"][0]
    print(f"| push without the server's part (push - push alone) | {transport_s * 1e3:.1f} |"
          f" {nbytes / transport_s / 1e9:.2f} | | |")
    for name, label in (("small step", f"push_pull latency, {SMALL} floats"), ("stats", "Stats latency (unary)")):
        wall, client, server = results[name]
        print(f"| {label} | {wall * 1e3:.3f} | | {client * 1e3:.3f} | {server * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
