"""Data sets on disk as a list of chunks, and how one chunk is read.

A chunk is a row group of a Parquet file (or a range of at most
``chunk_rows`` of its rows), or a range of rows of ``.npy`` files read
through a memory map. Listing reads only metadata (Parquet footers, .npy
headers); a process reads the chunks it is handed, one at a time, and never
the whole set.

Parquet paths: a file, a directory (every ``*.parquet`` below it), a glob
(``data/part-*.parquet``), or a URI of any filesystem pyarrow supports
(``s3://bucket/prefix/``). Errors name the file, the row group and the column.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError


class DataFileError(ConfigError):
    """A data file that cannot be read as the job needs it; the message names file, row group, column."""


@dataclass(frozen=True)
class Chunk:
    index: int  # its place in the data set's listing (seeds the chunk's split and sampling)
    path: str
    row_group: int  # -1 for .npy
    start: int  # rows [start, stop) of the row group (of the file, for .npy)
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def place(self) -> str:
        """Its file, and its row group for Parquet: how an error names it."""
        return self.path + (f", row group {self.row_group}" if self.row_group >= 0 else "")

    def where(self) -> str:
        return f"{self.place()}, rows {self.start}..{self.stop - 1}"


@dataclass
class RawChunk:
    """A chunk's values: features as float64 (NaN where null), the label, and the weight column."""

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None


def _filesystem(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
        return fs, root
    return pafs.LocalFileSystem(), os.path.abspath(path)


def list_parquet_files(path: str) -> tuple[object, list[str]]:
    """The filesystem and the sorted Parquet files that ``path`` names; an error if it names none."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(str(path))
    if any(ch in root for ch in "*?["):
        base = root
        while any(ch in base for ch in "*?["):
            base = os.path.dirname(base)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, root)]
    else:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataFileError(f"data path {path!r}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            files = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                     and not os.path.basename(i.path).startswith((".", "_"))]
        else:
            files = [root]
    if not files:
        raise DataFileError(f"data path {path!r} names no .parquet file")
    return fs, sorted(files)


def _numeric(kind) -> bool:
    import pyarrow as pa
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
        or pa.types.is_decimal(kind)


class ParquetChunks:
    """A Parquet data set: its columns, checked file by file, and its chunks."""

    def __init__(self, path: str, label: str, features=None, weight: str | None = None, chunk_rows: int = 65536):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.label, self.weight_column = str(path), label, weight
        fs, files = list_parquet_files(self.path)
        self._fs = fs
        self.chunks: list[Chunk] = []
        self.types: dict[str, str] = {}
        chosen = None
        for file in files:
            try:
                with fs.open_input_file(file) as handle:
                    meta = pq.ParquetFile(handle).metadata
                    schema = meta.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as e:
                raise DataFileError(f"{file}: not a readable Parquet file (truncated or corrupt?): {e}") from None
            names = schema.names
            for needed in [label] + ([weight] if weight else []) + list(features or []):
                if needed not in names:
                    raise DataFileError(f"{file}: column {needed!r} not found (columns: {', '.join(names)})")
            columns = list(features) if features else [n for n in names if n not in (label, weight)]
            if chosen is None:
                chosen = columns
            elif set(columns) != set(chosen):  # columns are read by name: their order may differ
                raise DataFileError(f"{file}: columns {sorted(columns)} differ from the first file's {sorted(chosen)}")
            for name in [*columns, label] + ([weight] if weight else []):
                kind = schema.field(name).type
                if not _numeric(kind):
                    raise DataFileError(f"{file}, row group 0, column {name!r}: type {kind}, not a number "
                                        f"(every feature, the label and the weight must be numeric)")
                self.types.setdefault(name, str(kind))
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                for start in range(0, rows, chunk_rows):
                    self.chunks.append(Chunk(len(self.chunks), file, group, start, min(rows, start + chunk_rows)))
        self.columns: list[str] = chosen
        self.rows = sum(c.rows for c in self.chunks)

    def read(self, chunk: Chunk) -> RawChunk:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = [*self.columns, self.label] + ([self.weight_column] if self.weight_column else [])
        try:
            with self._fs.open_input_file(chunk.path) as handle:
                table = pq.ParquetFile(handle).read_row_group(chunk.row_group, columns=wanted)
        except (pa.ArrowException, OSError) as e:
            raise DataFileError(f"{chunk.path}, row group {chunk.row_group}, column "
                                f"{self._bad_column(chunk, wanted)!r}: cannot be read: {e}") from None
        table = table.slice(chunk.start, chunk.rows)

        def as_float(name: str) -> np.ndarray:
            column = table.column(name)
            if pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type):
                column = column.cast(pa.float64())
            return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()

        x = np.stack([as_float(c) for c in self.columns], axis=1) if self.columns else np.zeros((chunk.rows, 0))
        label = table.column(self.label)
        if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
            if label.null_count:  # a class label cannot be filled: the row is unusable
                y = pc.fill_null(label.cast(pa.float64()), np.nan).to_numpy()
            else:
                y = label.cast(pa.int64()).to_numpy()
        else:
            y = as_float(self.label)
        weight = as_float(self.weight_column) if self.weight_column else None
        return RawChunk(x, y, weight)

    def _bad_column(self, chunk: Chunk, wanted: list[str]) -> str:
        """Which column of a row group fails to read (each is tried alone)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for name in wanted:
            try:
                with self._fs.open_input_file(chunk.path) as handle:
                    pq.ParquetFile(handle).read_row_group(chunk.row_group, columns=[name])
            except (pa.ArrowException, OSError):
                return name
        return "?"


class NpyChunks:
    """``x`` (rows, features) and ``y`` (rows,) ``.npy`` files (or arrays), in row ranges."""

    def __init__(self, x, y, chunk_rows: int = 65536, weight=None):
        self.path = os.fspath(x) if isinstance(x, (str, os.PathLike)) else "<array>"
        self._specs = (x, y, weight)
        self._open_all()
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataFileError(f"x ({self.path}) must be (rows, features) and y (rows,), of equal rows; got "
                                f"shapes {self.x.shape} and {self.y.shape}")
        for name, a in (("x", self.x), ("y", self.y)):
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise DataFileError(f"{name} ({getattr(a, 'filename', name)}): dtype {a.dtype}, not a number")
        self.columns = [f"x{i}" for i in range(self.x.shape[1])]
        self.types = {c: str(self.x.dtype) for c in self.columns}
        self.label, self.weight_column = "y", "weight" if weight is not None else None
        self.chunks = [Chunk(i, self.path, -1, lo, min(len(self.x), lo + chunk_rows))
                       for i, lo in enumerate(range(0, len(self.x), chunk_rows))]
        self.rows = len(self.x)

    def _open_all(self) -> None:
        x, y, weight = self._specs
        self.x, self.y = self._open(x, "x"), self._open(y, "y")
        self.weight = self._open(weight, "weight") if weight is not None else None

    def __getstate__(self) -> dict:
        # Files travel as their paths (a memory map would pickle as its whole contents); arrays as they are.
        state = dict(self.__dict__)
        for name, spec in zip(("x", "y", "weight"), self._specs):
            if isinstance(spec, (str, os.PathLike)):
                state[name] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if any(v is None for v, spec in zip((self.x, self.y, self.weight), self._specs) if spec is not None):
            self._open_all()

    @staticmethod
    def _open(value, name: str) -> np.ndarray:
        if not isinstance(value, (str, os.PathLike)):
            return np.asarray(value)
        if not os.path.isfile(value):
            raise DataFileError(f"{name} ({os.fspath(value)!r}): no such file")
        try:  # a memory map: a chunk's rows are read when they are touched, and nothing else
            return np.load(value, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataFileError(f"{name} ({os.fspath(value)!r}): not a readable .npy file (truncated?): {e}") \
                from None

    def read(self, chunk: Chunk) -> RawChunk:
        y = np.asarray(self.y[chunk.start:chunk.stop])
        if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            y = y.astype(np.int64)
        w = None if self.weight is None else np.asarray(self.weight[chunk.start:chunk.stop], dtype=np.float64)
        return RawChunk(np.asarray(self.x[chunk.start:chunk.stop], dtype=np.float64), y, w)


def open_chunks(config) -> ParquetChunks | NpyChunks:
    """The chunks of a DataConfig's train source."""
    if config.path is not None:
        return ParquetChunks(config.path, config.label, config.features, config.sample.weight, config.chunk_rows)
    return NpyChunks(config.x, config.y, config.chunk_rows)


def open_test_chunks(config, columns: list[str]) -> ParquetChunks | NpyChunks | None:
    """The chunks of a DataConfig's own test data set (``test:`` a path, or an x/y mapping), if any,
    read as the train set's ``columns`` in their order (whatever order its files hold them in)."""
    test = config.test
    if test is None:
        return None
    if isinstance(test, dict):
        if "x" in test:
            return NpyChunks(test["x"], test["y"], config.chunk_rows)
        test = test.get("path")
    return ParquetChunks(test, config.label, columns, None, config.chunk_rows)


def classifies(reader) -> bool:
    """Whether the label holds classes (an integer or bool column) rather than numbers to regress on."""
    kind = reader.types.get(reader.label) if isinstance(reader, ParquetChunks) else str(reader.y.dtype)
    return kind is not None and (kind.startswith(("int", "uint")) or kind in ("bool",))
