"""The job configuration: one frozen dataclass tree, loaded from YAML or kwargs.

``JobConfig`` is the ``job:`` section of ``cluster.yaml`` and the keyword
arguments of ``launcher.Job``; the rest of ``cluster.yaml`` belongs to Ray's
cluster launcher and is not read here. Unknown keys and bad values are
rejected before anything starts, with the file and the dotted key named.
Command-line overrides (``--set consistency.mode=bsp``) are parsed as YAML
scalars and checked the same way, naming the ``--set`` that was wrong.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ...ps.core.consistency import ConsistencyConfig
from ...errors import ConfigError
from ...ps.transport.grpc_security import GrpcConfig
from .faults import ChaosConfig, CheckpointConfig, FaultConfig
from ...ps.core.optimizers import OptimizerConfig
from ...ps.core.schedules import ScheduleConfig
from ...ps.compression.encoding import compression_config
from ...ps.sparse.config import SparseConfig
from ...settings import build, dataclass_in, every_steps, number, require
from ...worker.data.config import data_config, is_pipeline_spec
from ...worker.loop.local_steps import LocalStepsConfig

TRANSPORTS = ("auto", "shm", "grpc", "ray")
#: schedule: auto decays over the last fifth of a job: the stale end steadied, the rest of the job at full lr
#: (a decay over the whole job cost short and small jobs: a 1-epoch job, a distilled student; consistency.md)
AUTO_DECAY_FRACTION = 0.2


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string (it wants ``1.0e-3``); a learning rate
    written the usual way must load as the number it is."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass(frozen=True)
class DebugConfig:
    """Knobs for experiments and tests, off by default."""

    slow_workers: Mapping[int, float] = field(default_factory=dict)  # worker id -> extra seconds per step
    # worker id -> extra time per step as a multiple of that step's compute (1.0: half speed)
    slowdown: Mapping[int, float] = field(default_factory=dict)
    # transient stragglers: {probability: p, factor: f}: each step, each worker is held back by
    # f times its compute time with probability p (seeded by the job's seed and the worker)
    stragglers: Mapping[str, float] = field(default_factory=dict)
    # the compute time slowdown and stragglers are multiples of, in seconds; None: each step's own forward and
    # backward. A fixed value holds every system a benchmark compares to one rule (launcher/bench/runner.py).
    compute_s: float | None = None
    audit: bool = False  # shards record every (worker, incarnation, seq) they apply; the summary counts repeats
    # a slow network on one machine: gRPC workers reach the shards through a link of this many Mbit/s
    # (launcher/job/throttle.py), shared by all of them, each direction apart
    link_mbit: float | None = None
    link_latency_ms: float = 0.0  # one way, added to every chunk on that link

    def __post_init__(self) -> None:
        require(isinstance(self.audit, bool), f"audit ({self.audit!r}) must be true or false")
        if self.link_mbit is not None:
            number(self.link_mbit, "debug.link_mbit", minimum=0, exclusive=True)
        number(self.link_latency_ms, "debug.link_latency_ms", minimum=0)
        if self.compute_s is not None:
            number(self.compute_s, "debug.compute_s", minimum=0)
        for key in ("slow_workers", "slowdown"):
            value = getattr(self, key)
            require(isinstance(value, Mapping), f"{key} ({value!r}) must be a mapping of worker id to a number")
            for worker, amount in value.items():
                number(worker, f"{key} key {worker!r}", minimum=0, integer=True)
                number(amount, f"{key}[{worker}]", minimum=0)
        require(isinstance(self.stragglers, Mapping), f"stragglers ({self.stragglers!r}) must be a mapping")
        if self.stragglers:
            unknown = sorted(set(map(str, self.stragglers)) - {"probability", "factor"})
            require(not unknown, f"stragglers: unknown key {unknown[:1]} (allowed: factor, probability)")
            require(set(self.stragglers) == {"probability", "factor"}, "stragglers needs probability and factor")
            number(self.stragglers["probability"], "stragglers.probability", minimum=0)
            require(self.stragglers["probability"] <= 1,
                    f"stragglers.probability ({self.stragglers['probability']!r}) must be <= 1")
            number(self.stragglers["factor"], "stragglers.factor", minimum=0)


@dataclass(frozen=True)
class JobConfig:
    """A training job. Strings name things in YAML; the Python API also takes objects."""

    model: Any = "rayps.worker.models:mlp"  # 'module:callable' or a callable returning an nn.Module
    model_args: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments for model
    data: Any = "rayps.worker.datasets:digits"  # any form worker.data.resolve_data takes; files: a DataConfig
    test_data: Any = None  # None: the data's own test split, or a held-out part of train
    loss: Any = "cross_entropy"  # cross_entropy | mse | kl | 'module:callable' | a callable
    # hooks over the rule that calls the model with a batch (worker/loop/batches.py), 'module:callable' or callables:
    forward: Any = None  # (model, inputs) -> output; the loss is applied to it
    compute_loss: Any = None  # (model, inputs, targets) -> loss or (loss, output): a model with its own loss
    accumulate: int = 1  # a push's batch (batch_size) computed in this many micro-batches, one after another
    clip_grad_norm: float | None = None  # clip each push's gradient to this global norm, on the worker
    compile: Any = False  # torch.compile the model on each worker: true, or torch.compile's options {mode, backend}
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision under torch.autocast, float32 masters; fp16 with a loss scale)
    train_loop_per_worker: Any = None  # a loop of the user's own (rayps.train): a callable or 'module:callable'
    train_loop_config: Mapping[str, Any] = field(default_factory=dict)  # what that loop is called with
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    # H batches on each worker's own copy with an inner optimizer, then one push of the change (an outer step)
    local_steps: LocalStepsConfig = field(default_factory=LocalStepsConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)  # the model's rayps.Embedding tables
    # what workers send each step: a codec name (none | fp16 | bf16 | int8 | topk) or a mapping
    # {codec, fraction, chunk, error_feedback}; a CompressionConfig once loaded (ps/compression/encoding.py)
    compression: Any = "none"
    servers: int = 2
    workers: int = 2
    transport: str = "auto"  # auto (shm on one node, else grpc) | shm | grpc | ray (the object store)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)  # used when transport is grpc
    batch_size: int = 32
    epochs: int = 30
    max_steps: int | None = None  # per worker; stops early when set
    seed: int = 0
    num_gpus: float = 0  # per worker; > 0 trains on CUDA
    worker_cpus: float = 0  # Ray CPU reservation per worker actor
    server_cpus: float = 0  # Ray CPU reservation per shard actor
    server_resources: Mapping[str, float] = field(default_factory=dict)  # custom resources per shard, e.g. {ps_server: 1}
    worker_resources: Mapping[str, float] = field(default_factory=dict)  # custom resources per worker
    spread_servers: bool = True  # place shards on different nodes where possible
    eval_every_s: float = 2.0  # evaluate on the test split this often while training (0: not by time)
    # ... and every so many steps per worker (auto: a tenth of the job, none when eval_every_s is 0; 0: not by steps)
    eval_every_steps: Any = "auto"
    history_every_steps: Any = "auto"  # a history row every so many steps per worker (auto: about 200 in a job)
    torch_threads: int = 1  # intra-op threads per worker
    target_loss: float | None = None  # record when each worker's mean loss of 10 steps first falls below it
    overlap: Any = "auto"  # compute the next step while a push is in flight: true, false, auto (ssp s >= 1)
    debug: DebugConfig = field(default_factory=DebugConfig)
    chunk_batches: int | None = None  # batches per unit of the work queue (None: about 8 per worker per epoch)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)

    @property
    def overlaps(self) -> bool:
        """Whether workers compute ahead: ``overlap``, with auto on wherever the bound allows it."""
        if self.overlap == "auto":
            # The mode says; the bundled modes say off: the extra step of staleness cost ~1.5 points on the
            # digits BatchNorm CNN under asp and up to 6 points on a transformer under ssp (consistency.md).
            return self.consistency.rules.overlaps_by_default(self.consistency) and not self.local_steps.enabled
        return bool(self.overlap)

    @property
    def shard_optimizer(self) -> OptimizerConfig:
        """What the shards apply to a push: ``optimizer``, or under local steps the outer optimizer."""
        if not self.local_steps.enabled:
            return self.optimizer
        return self.local_steps.outer_optimizer.resolved(self.consistency.rules.gathers, self.workers)

    def __post_init__(self) -> None:
        if self.local_steps.enabled:
            require(self.optimizer == OptimizerConfig(),
                    "optimizer: with local_steps the workers step with local_steps.inner_optimizer and the shards"
                    " with local_steps.outer_optimizer; set those, not optimizer")
            require(self.overlap is not True, "overlap: true does not apply with local_steps: an outer step's inner"
                    " steps begin from its pull")
        if self.schedule.name == "auto":  # the mode says: a decay at the end where updates are stale (consistency.py)
            # under local steps the schedule is the outer lr's, which DiLoCo keeps constant
            decays = self.consistency.rules.decays_by_default(self.consistency) and not self.local_steps.enabled
            object.__setattr__(self, "schedule", dataclasses.replace(
                self.schedule, name="cosine" if decays else "constant",
                decay_fraction=AUTO_DECAY_FRACTION if decays else 1.0))
        if is_pipeline_spec(self.data):  # files read in chunks: the data section is checked now, by key
            object.__setattr__(self, "data", data_config(self.data, "data"))
        object.__setattr__(self, "compression", compression_config(self.compression))
        require(self.local_steps.fragments == 1 or self.compression.codec == "none",
                f"local_steps.fragments ({self.local_steps.fragments}) with compression {self.compression.codec!r}:"
                " the codecs encode whole ranges; streaming fragments travel as float32")
        number(self.servers, "servers", minimum=1, integer=True)
        number(self.workers, "workers", minimum=1, integer=True)
        number(self.batch_size, "batch_size", minimum=1, integer=True)
        number(self.accumulate, "accumulate", minimum=1, integer=True)
        require(self.accumulate <= self.batch_size,
                f"accumulate ({self.accumulate}) must not exceed batch_size ({self.batch_size}): each micro-batch"
                " needs an example")
        require(self.precision in ("fp32", "bf16", "fp16"),
                f"precision ({self.precision!r}) must be fp32, bf16 or fp16")
        require(isinstance(self.compile, (bool, Mapping)),
                f"compile ({self.compile!r}) must be true, false or a mapping of torch.compile options")
        if isinstance(self.compile, Mapping):
            unknown = sorted(set(map(str, self.compile)) - {"mode", "backend", "fullgraph", "dynamic", "options"})
            require(not unknown, f"compile: unknown key {unknown[:1]} (allowed: backend, dynamic, fullgraph,"
                                 " mode, options)")
        if self.clip_grad_norm is not None:
            number(self.clip_grad_norm, "clip_grad_norm", minimum=0, exclusive=True)
        number(self.epochs, "epochs", minimum=1, integer=True)
        if self.max_steps is not None:
            number(self.max_steps, "max_steps", minimum=1, integer=True)
        number(self.seed, "seed", minimum=0, integer=True)
        number(self.num_gpus, "num_gpus", minimum=0)
        number(self.worker_cpus, "worker_cpus", minimum=0)
        number(self.server_cpus, "server_cpus", minimum=0)
        number(self.torch_threads, "torch_threads", minimum=1, integer=True)
        number(self.eval_every_s, "eval_every_s", minimum=0)
        every_steps(self.eval_every_steps, "eval_every_steps", minimum=0)
        every_steps(self.history_every_steps, "history_every_steps", minimum=1)
        require(isinstance(self.spread_servers, bool), f"spread_servers ({self.spread_servers!r}) must be true or false")
        for key in ("server_resources", "worker_resources"):
            value = getattr(self, key)
            require(isinstance(value, Mapping), f"{key} ({value!r}) must be a mapping of resource name to amount")
            for name, amount in value.items():
                require(isinstance(name, str) and name not in ("CPU", "GPU"),
                        f"{key} key {name!r} must name a custom resource (CPU and GPU have their own keys)")
                number(amount, f"{key}[{name}]", minimum=0)
        require(self.overlap in (True, False, "auto"), f"overlap ({self.overlap!r}) must be true, false or auto")
        if self.overlap is True:
            c = self.consistency
            require(c.rules.computes_ahead(c), f"overlap: true needs asp or ssp with staleness >= 1, not"
                    f" {c.rules.label(c, self.workers)}: computing ahead would break the bound")
        require(self.transport in TRANSPORTS,
                f"transport ({self.transport!r}) must be one of {', '.join(TRANSPORTS)}")
        require(isinstance(self.model_args, Mapping), f"model_args ({self.model_args!r}) must be a mapping")
        require(self.model is not None and (callable(self.model) or isinstance(self.model, str)),
                f"model ({self.model!r}) must be a 'module:callable' string or a callable")
        require(isinstance(self.train_loop_config, Mapping),
                f"train_loop_config ({self.train_loop_config!r}) must be a mapping")
        for key in ("forward", "compute_loss", "train_loop_per_worker"):
            hook = getattr(self, key)
            require(hook is None or callable(hook) or (isinstance(hook, str) and ":" in hook),
                    f"{key} ({hook!r}) must be a 'module:callable' string or a callable")
        for key in ("slow_workers", "slowdown"):
            for worker in getattr(self.debug, key):
                require(worker < self.workers,
                        f"debug.{key} names worker {worker}, but the job has workers 0..{self.workers - 1}")
        if self.target_loss is not None:
            number(self.target_loss, "target_loss", minimum=0)
        if self.chunk_batches is not None:
            number(self.chunk_batches, "chunk_batches", minimum=1, integer=True)
        self.chaos.check_actors(self.workers, self.servers)
        self.chaos.check_random(self.fault.max_restarts, self.checkpoint.enabled)
        quorum = self.consistency.quorum
        require(quorum is None or quorum <= self.workers,
                f"consistency.quorum ({quorum}) must not exceed workers ({self.workers})")

    def to_dict(self) -> dict:
        """Plain data for summary files; objects that are not plain data become their repr."""
        return _plain(self)


def _plain(value: Any) -> Any:
    # Not dataclasses.asdict: it deep-copies every value, which fails for callables holding
    # locks and copies whole in-memory data sets only to repr them.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"consistency.mode=bsp"`` -> (["consistency", "mode"], "bsp"); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set consistency.mode=bsp")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {e}") from None
    return key.strip().split("."), value


def _check_path(root: type, path: list[str], text: str) -> None:
    """Reject an override whose key names no field (before merging, so the message names --set)."""
    cls: Any = root
    for depth, part in enumerate(path):
        if cls is None:
            return  # inside a free-form mapping (model_args, slow_workers): anything goes
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(path[:depth]) or "job"
            raise ConfigError(f"--set {text!r}: unknown key {part!r} in {where} (allowed: {', '.join(sorted(fields))})")
        cls = dataclass_in(typing.get_type_hints(cls)[part])


def merge_overrides(root: type, raw: Mapping[str, Any], overrides: list[str]) -> dict:
    """A copy of ``raw`` (the keys of dataclass ``root``) with each ``KEY=VALUE`` merged in."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        _check_path(root, path, text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if dataclasses.is_dataclass(child):
                child = dataclasses.asdict(child)
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    return value


def read_job_section(path: str | Path) -> dict:
    """The ``job:`` mapping of a cluster.yaml (an empty mapping when there is none)."""
    doc = read_yaml_mapping(path)
    job = doc.get("job")
    if job is None:  # `job:` left empty, or no job section: the defaults
        job = {}
    if not isinstance(job, Mapping):
        raise ConfigError(f"{path}: job: expected a mapping, got {job!r}")
    return dict(job)


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping (empty file: empty mapping); errors name the file."""
    path = Path(path)
    try:
        doc = _load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:  # a directory, no permission: the CLI must still fail with a message
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return dict(doc)


def load_job_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """The job from ``path``'s ``job:`` section (defaults when None), with overrides applied."""
    raw = read_job_section(path) if path is not None else {}
    where = f"{path}: job" if path is not None else "job"
    config = build(JobConfig, raw, where)  # the file alone first, so its errors name the file
    if overrides:
        config = build(JobConfig, merge_overrides(JobConfig, raw, overrides), "--set")
    return config
