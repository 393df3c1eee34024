"""Gradient compression over a slow link: each codec's time to a target loss, one table.

    python benchmarks/compression.py [--mbit 100] [--steps 500] [--codecs none,fp16,bf16,int8,topk]

The rows of ``psctl bench`` that measure compression (launcher/bench/wire.py), alone: the bench's small
model over gRPC, the workers reaching the shards through one throttled link on loopback, run back to
back on one local Ray instance.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rayps.runtime import RAY
from rayps.launcher.bench.wire import LINK_MBIT, WIRE_STEPS, wire_rows, wire_table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mbit", type=float, default=LINK_MBIT)
    parser.add_argument("--steps", type=int, default=WIRE_STEPS)
    parser.add_argument("--codecs", default=None, help="comma-separated first words of the rows")
    args = parser.parse_args()
    RAY.start(dashboard=False)
    with tempfile.TemporaryDirectory() as out:
        rows = wire_rows(Path(out), args.steps, args.mbit, codecs=args.codecs.split(",") if args.codecs else None)
    print(wire_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
