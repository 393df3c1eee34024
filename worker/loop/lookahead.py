"""The ids a batch will pull, read from the batch before the model runs: what lets rows travel early.

A sparse module pulls the rows of the ids it is given when the forward reaches
it. If those ids are a function of the batch alone (``self.user(x[:, 0])``,
``self.bag(batch["items"])``), the worker can compute them for the next batch
while it pushes this one, and ask the shards for those rows behind the push
(ps/sparse/client.py): they arrive while the worker lands its dense step and
loads the batch, instead of after the forward has begun.

``lookahead(model)`` traces the model's forward with torch.fx, the sparse
modules kept whole, and keeps the part of the graph that leads from the inputs
to each sparse module's ids. It gives up (None, and the worker pulls as
before) when the forward cannot be traced, or when some ids depend on anything
but the inputs: a module's output, a parameter or a buffer. That is how
TorchRec's sparse pipeline finds the embedding inputs it fetches ahead.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from ...ps.sparse.ids import unique_sorted
from .batches import spread
from .embedding import _SparseModule, sparse_modules

log = logging.getLogger(__name__)


class _KeepSparseModulesWhole(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _SparseModule) or super().is_leaf_module(m, qualname)


def lookahead(model: nn.Module) -> Callable[[Any], dict[str, np.ndarray]] | None:
    """A function of a batch's inputs giving each table's ids (unique, sorted) that the model's forward on
    them will pull, or None when the ids cannot be read from the inputs alone."""
    try:
        graph = _KeepSparseModulesWhole().trace(model)
    except Exception as e:  # noqa: BLE001 - any forward fx cannot follow: pull as the forward goes
        log.info("sparse rows are pulled as the forward reaches them: the model cannot be traced (%s)", e)
        return None
    sparse_modules(model)  # every table named (after its module, unless named)
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), _SparseModule)]
    if not calls:
        return None
    wanted = [call.args[0] if call.args else call.kwargs.get("input") for call in calls]
    if not all(isinstance(ids, fx.Node) for ids in wanted):
        return None
    needed = _ancestors(wanted)
    if any(n.op in ("call_module", "get_attr") for n in needed):  # ids computed by a layer, or from weights
        return None
    extract = fx.GraphModule(model, _subgraph(graph, needed, wanted))
    tables = [(modules[c.target].table, modules[c.target].num_embeddings) for c in calls]

    def upcoming(inputs: Any) -> dict[str, np.ndarray]:
        args, kwargs = spread(inputs)
        with torch.no_grad():
            found = extract(*args, **kwargs)
        per_table: dict[str, list[np.ndarray]] = {}
        refused: set[str] = set()
        for (table, size), ids in zip(tables, found):
            flat = ids.detach().reshape(-1).cpu().numpy().astype(np.int64, copy=False)
            if len(flat) and (flat.min() < 0 or flat.max() >= size):
                refused.add(table)  # out of range: the forward will say so; ask nothing ahead
            per_table.setdefault(table, []).append(flat)
        return {t: unique_sorted(np.concatenate(parts)) for t, parts in per_table.items() if t not in refused}
    return upcoming


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    """``nodes`` and every node they are computed from."""
    found, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n not in found:
            found.add(n)
            todo.extend(n.all_input_nodes)
    return found


def _subgraph(graph: fx.Graph, needed: set[fx.Node], wanted: list[fx.Node]) -> fx.Graph:
    """The ``needed`` nodes of ``graph`` (every placeholder kept, so it takes the forward's arguments),
    returning ``wanted`` as a tuple in order."""
    out, copied = fx.Graph(), {}
    for n in graph.nodes:
        if n.op == "placeholder" or n in needed:
            copied[n] = out.node_copy(n, lambda m: copied[m])
    out.output(tuple(copied[n] for n in wanted))
    return out
