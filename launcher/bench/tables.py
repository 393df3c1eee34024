"""The bench's Markdown tables, rendered again from its ``bench.json``: the docs' speed tables come from here.

    python -m rayps.launcher.bench.tables FILE.json              # every table FILE holds, and where it came from
    python -m rayps.launcher.bench.tables FILE.json --table speed
    python -m rayps.launcher.bench.tables --update PAGE.md ...   # rewrite the tables those pages mark

``bench.json`` is what ``psctl bench`` writes (launcher/bench/runner.py:
``bench_record``): ``{"command", "commit", "date", "machine", "rows"}``. An older one, a
bare list of rows, still reads, its command, commit and date unknown.

A page marks a table with two comments, naming the JSON file (relative to
the page) and the table; ``--update`` rewrites what lies between them, and
tests/test_docs.py fails while a page differs from what its JSON renders::

    <!-- bench-table: results/bench-7bddc37.json speed -->
    <!-- /bench-table -->
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

#: Each table: the ``model`` of its rows (None: every row no other table takes, i.e. the models' speed rows).
KINDS = {"speed": None, "transport": "transport", "stragglers": "stragglers", "sparse": "sparse",
         "compression": "compression", "cluster": "cluster", "cluster_sparse": "sparse-cluster", "cost": "cost",
         "local": "local"}
MARKED = re.compile(r"(?P<begin><!-- bench-table: (?P<file>\S+) (?P<kind>\w+) -->\n)(?P<body>.*?)"
                    r"(?P<end><!-- /bench-table -->)", re.S)


@dataclass(frozen=True)
class Bench:
    """One bench.json: its rows, and which command at which commit made them on which date."""

    rows: list
    command: str | None = None
    commit: str | None = None
    date: str | None = None
    note: str | None = None  # e.g. where the rows were converted from
    machine: str | None = None

    def of(self, kind: str) -> list:
        if kind not in KINDS:
            raise ValueError(f"table ({kind!r}) must be one of {', '.join(KINDS)}")
        model = KINDS[kind]
        if model is None:
            others = {m for m in KINDS.values() if m is not None}
            return [r for r in self.rows if r.model not in others]
        return [r for r in self.rows if r.model == model]

    def provenance(self) -> str:
        command = f"`{self.command}`" if self.command else "an unrecorded command"
        commit = f"commit {self.commit}" if self.commit else "an unrecorded commit"
        date = f" on {self.date}" if self.date else ""
        machine = f" Machine: {self.machine}." if self.machine else " Machine: unrecorded."
        return f"Measured by {command} at {commit}{date}.{machine}" + (f" {self.note}" if self.note else "")


def load_bench(path: str | Path) -> Bench:
    """A bench.json, in the form ``psctl bench`` writes it now or the older bare list of rows."""
    from .runner import Row

    data = json.loads(Path(path).read_text())
    record = {"rows": data} if isinstance(data, list) else data
    rows = [Row(r["model"], r["system"], r["samples_per_s"], r.get("extra") or {}) for r in record["rows"]]
    return Bench(rows, record.get("command"), record.get("commit"), record.get("date"), record.get("note"),
                 record.get("machine"))


def render(bench: Bench, kind: str) -> str:
    """One table of ``bench``, formatted as ``psctl bench`` prints it, then the sentence saying where it came from."""
    from .cluster import cluster_table
    from .cost import cost_table
    from .local import local_table
    from .runner import straggler_table, table, transport_table
    from .sparse import sparse_table
    from .wire import wire_table

    rows = bench.of(kind)
    if not rows:
        raise ValueError(f"the bench file holds no {kind} rows")
    draw = {"speed": table, "transport": transport_table, "stragglers": straggler_table, "sparse": sparse_table,
            "compression": wire_table, "cluster": cluster_table, "cluster_sparse": sparse_table,
            "cost": cost_table, "local": local_table}[kind]
    return f"{draw(rows)}\n\n{bench.provenance()}\n"


def render_all(bench: Bench) -> str:
    return "\n".join(render(bench, kind) for kind in KINDS if bench.of(kind))


def updated(page: str | Path) -> str:
    """``page``'s text with every marked table rendered again from its JSON file."""
    page = Path(page)

    def one(m: re.Match) -> str:
        return f"{m['begin']}\n{render(load_bench(page.parent / m['file']), m['kind'])}\n{m['end']}"

    return MARKED.sub(one, page.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rayps.launcher.bench.tables", description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", help="a bench.json")
    parser.add_argument("--table", choices=list(KINDS), help="only this table (default: every one the file holds)")
    parser.add_argument("--update", nargs="+", metavar="PAGE", help="rewrite the tables these Markdown pages mark")
    args = parser.parse_args(argv)
    if args.update:
        for page in args.update:
            text = updated(page)
            if text != Path(page).read_text():
                Path(page).write_text(text)
                print(f"updated {page}")
        return 0
    if not args.file:
        parser.error("give a bench.json, or --update PAGE ...")
    bench = load_bench(args.file)
    print(render(bench, args.table) if args.table else render_all(bench), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
