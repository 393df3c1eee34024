"""One step of one worker on one shard, as every transport hands it to the shard.

Each server (the object store's actor call, gRPC's Step stream, the
same-node socket) decodes its request into a ``Step`` and calls the shard's
one entry point, ``ParameterShard.step`` (ps/shard.py): check how far ahead
it computes, wait at the checkpoint gate, push, then wait until the
consistency mode admits the worker's next iteration and answer with the
parameters (an ``Answer``: what it ``Pulled``, and the push's outcome).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

#: A push's outcomes, as every transport reports them (protos/ps.proto: PushReply.Outcome).
OUTCOMES = ("applied", "duplicate", "stale")

#: The most iterations a worker may say it computes ahead of its pull (``Step.ahead``), and how far past a
#: worker's next iteration a pull may ask for. The trainer computes at most one ahead (``overlap``); each
#: iteration ahead is a gradient held in memory, so nothing real comes near this. A larger claim would be
#: waited on until the deadline and recorded as a clock gap in every later Stats.
MAX_AHEAD = 1024
#: The highest clock a worker may claim to have completed (AdvanceClock). No job runs 2^63 iterations, and
#: with clocks below it everything computed from one (clock + 1 + ahead, leads, lags) stays inside uint64,
#: the wire's and msgpack's range, so no claim can break Stats.
MAX_CLOCK = 2 ** 63 - 1


@dataclass
class Step:
    """A worker's gradient of iteration ``clock`` for one shard, and what it asks back."""

    worker_id: int
    clock: int
    grad: np.ndarray  # float32, this shard's slice; or the job's codec's blob (uint8), decoded by the shard
    pulled_version: int = 0  # the version the gradient was computed from: its staleness is measured against it
    num_samples: int = 0
    loss: float = 0.0
    buffers: np.ndarray | None = None  # the worker's slice of its model buffers (float64); None: no report
    ahead: int = 0  # iterations it computes before its next push: the answer admits clock + 1 + ahead
    incarnation: int = 0
    seq: int = 0  # (worker, incarnation, seq) is applied once; 0: the clock's place in this incarnation
    # the transport leaves ``grad`` as it is until this step is answered (shm: the worker's own segment, which it
    # writes again only after the answer), so a round may gather it without a copy
    held: bool = False

    @property
    def answers(self) -> int:
        """The iteration whose parameters the answer carries."""
        return self.clock + 1 + self.ahead


class Pulled(NamedTuple):
    """The parameters for a worker's next iteration (as ``take`` read them out), their version, and the
    merged model buffers (None where the shard holds none)."""

    params: Any
    version: int
    buffers: np.ndarray | None


class Answer(NamedTuple):
    """What a step answers: what it pulled, and what its push did (one of ``OUTCOMES``)."""

    params: Any
    version: int
    buffers: np.ndarray | None
    outcome: str
