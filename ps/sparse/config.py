"""The job's ``sparse:`` section: how the shards train each sparse table of the model.

Top-level keys are the defaults of every table; ``tables:`` overrides them per
table, by name (a module's place in the model, or the ``table=`` it names)::

    sparse:
      optimizer: {name: adagrad, lr: 0.05}
      consistency: {mode: ssp, staleness: 4}   # default: the job's mode
      init: normal
      init_scale: 0.01
      tables:
        wide: {optimizer: {name: ftrl, lr: 0.05, l1: 0.001}, init: zeros}

The shapes come from the model's ``rayps.Embedding`` / ``rayps.EmbeddingBag``
modules; nothing here sizes a table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ConfigError
from ..core.consistency import ConsistencyConfig
from .row_optimizers import RowOptimizerConfig
from .row_store import INITIALIZERS
from ...settings import build, number, require
from .table import TableConfig


@dataclass(frozen=True)
class TableSettings:
    """How one table is trained (its shape comes from the model)."""

    optimizer: RowOptimizerConfig = field(default_factory=RowOptimizerConfig)
    consistency: ConsistencyConfig | None = None  # None: the job's mode, staleness and staleness_aware_lr
    init: str = "normal"  # normal | uniform | zeros (ftrl tables start at zero)
    init_scale: float = 1.0  # normal: the std (torch's Embedding: 1); uniform: the bound
    min_touches: int = 1  # frequency filter: a row is created at its N-th pull
    evict_after: int | None = None  # drop rows unseen for this many of the table's updates
    # a larger-than-memory table: the MB of rows (and their state) each shard keeps in memory, the rest on its
    # local disk (null: every row in memory); which rows leave memory first (lru | lfu); where the disk file is
    memory_mb: float | None = None
    eviction: str = "lru"
    disk_dir: str | None = None

    def __post_init__(self) -> None:
        require(self.init in INITIALIZERS, f"init ({self.init!r}) must be one of {', '.join(INITIALIZERS)}")
        number(self.init_scale, "init_scale", minimum=0)
        number(self.min_touches, "min_touches", minimum=1, integer=True)
        if self.evict_after is not None:
            number(self.evict_after, "evict_after", minimum=1, integer=True)


@dataclass(frozen=True)
class SparseConfig(TableSettings):
    tables: Mapping[str, Any] = field(default_factory=dict)  # table name -> TableSettings keys overriding these
    # read the next batch's ids before its forward and ask their rows behind this step's push (the job's own
    # loop; worker/loop/lookahead.py); false: every module pulls when the forward reaches it
    lookahead: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.lookahead, bool), f"sparse lookahead ({self.lookahead!r}) must be true or false")
        require(isinstance(self.tables, Mapping), f"tables ({self.tables!r}) must map table names to settings")
        for name in self.tables:
            self.settings(name)  # every override is checked as the job loads

    def settings(self, name: str) -> TableSettings:
        """The defaults with table ``name``'s overrides merged in (whole sections replaced)."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(TableSettings)}
        override = self.tables.get(name) or {}
        if isinstance(override, TableSettings):
            return override
        if not isinstance(override, Mapping):
            raise ConfigError(f"sparse.tables.{name}: expected a mapping of table settings, got {override!r}")
        return build(TableSettings, {**base, **override}, f"sparse.tables.{name}")

    def table_configs(self, shapes: Mapping[str, tuple[int, int]], job: ConsistencyConfig,
                      seed: int) -> list[TableConfig]:
        """One ``TableConfig`` per table of the model (``shapes``: name -> (num_embeddings, dim))."""
        unknown = sorted(set(self.tables) - set(shapes))
        if unknown:
            raise ConfigError(f"sparse.tables names {unknown[0]!r}, but the model's sparse tables are"
                              f" {', '.join(sorted(shapes)) or 'none'}")
        out = []
        for name, (rows, dim) in sorted(shapes.items()):
            s = self.settings(name)
            mode = s.consistency or ConsistencyConfig(job.mode, job.staleness,
                                                      staleness_aware_lr=job.staleness_aware_lr)
            try:
                out.append(TableConfig(name, rows, dim, s.optimizer, mode, s.init, s.init_scale, s.min_touches,
                                       s.evict_after, seed, s.memory_mb, s.eviction, s.disk_dir))
            except ConfigError as e:
                raise ConfigError(f"sparse.tables.{name}: {e}") from None
        return out
