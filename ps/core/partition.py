"""Range partitioning of a flat parameter vector across server shards.

Each shard owns one contiguous range ``[lo, hi)`` of the flat vector, so a
push or pull is one contiguous copy per shard. Ranges are cut by element
count, which for one float32 buffer is the same as by bytes: the largest and
smallest shard differ by at most one element. A tensor may straddle two
shards; nothing on the hot path cares, because only the flat vector moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ...errors import ConfigError


@dataclass(frozen=True)
class ShardRange:
    shard_id: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def partition(numel: int, num_shards: int, allow_empty: bool = False) -> list[ShardRange]:
    """Split ``numel`` elements into ``num_shards`` contiguous, byte-balanced ranges.

    ``allow_empty`` lets some shards hold nothing (model buffers: often fewer
    values than shards, or none at all).
    """
    if num_shards < 1:
        raise ConfigError(f"servers ({num_shards}) must be >= 1")
    if numel < num_shards and not allow_empty:
        raise ConfigError(
            f"servers ({num_shards}) must not exceed the number of parameters ({numel}):"
            " every shard needs at least one element"
        )
    base, extra = divmod(numel, num_shards)
    ranges, lo = [], 0
    for i in range(num_shards):
        hi = lo + base + (1 if i < extra else 0)
        ranges.append(ShardRange(i, lo, hi))
        lo = hi
    return ranges


def buffer_ranges_or_none(buffer_ranges: Sequence[ShardRange] | None, ranges: Sequence[ShardRange],
                          ) -> list[ShardRange]:
    """``buffer_ranges``, or an empty range per shard when the model has no buffers."""
    return list(buffer_ranges) if buffer_ranges else [ShardRange(r.shard_id, 0, 0) for r in ranges]


def buffer_slices(values, ranges: Sequence[ShardRange]) -> list:
    """Each shard's slice of ``values`` (model buffers), or None where it holds none or nothing is sent."""
    return [None if values is None or r.size == 0 else values[r.lo:r.hi] for r in ranges]


def fragment_span(size: int, fragments: int, clock: int) -> tuple[int, int]:
    """The part ``[lo, hi)`` of a shard's ``size`` values that the push of ``clock`` carries when the model is
    synced in ``fragments`` fragments (streaming local steps): the ``(clock - 1) % fragments``-th of that many
    near-equal parts. Every shard's part p together is fragment p of the model, so each push reaches every
    shard (one clock, one seq everywhere) with a fragment's worth of values. With 1 fragment, or for no
    clock (a registration, an evaluation), all of it."""
    if fragments <= 1 or clock <= 0:
        return 0, size
    part = (clock - 1) % fragments
    return size * part // fragments, size * (part + 1) // fragments


def fragment_ranges(ranges: Sequence[ShardRange], fragments: int, clock: int) -> list[ShardRange]:
    """Each shard's range narrowed to what the push of ``clock`` carries (``fragment_span``), in flat positions."""
    out = []
    for r in ranges:
        lo, hi = fragment_span(r.size, fragments, clock)
        out.append(ShardRange(r.shard_id, r.lo + lo, r.lo + hi))
    return out
