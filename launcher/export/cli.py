"""``psctl export RUN_DIR``: its flags, and the ``export:`` section of ``--config FILE`` they override."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's model (safetensors) and compressed variants, with a report")
    p.add_argument("run_dir")
    p.add_argument("--config", help="a YAML file whose export: section says what to make (flags override it)")
    p.add_argument("--output", help="where to write (default RUN_DIR/export)")
    p.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning to this share of zeros")
    p.add_argument("--prune-scope", choices=("global", "layer"), help="one threshold, or one per layer")
    p.add_argument("--prune-finetune", type=int, metavar="STEPS", help="fine-tune the pruned model, mask held")
    p.add_argument("--filter-prune", type=float, metavar="KEEP", help="keep this share of units and channels")
    p.add_argument("--filter-finetune", type=int, metavar="STEPS", help="fine-tune the filter-pruned model")
    p.add_argument("--quantize", action="store_true", help="post-training int8")
    p.add_argument("--student", metavar="MODULE:CALLABLE", help="distil this student from the model")
    p.add_argument("--student-args", metavar="JSON", help="the student's keyword arguments, as JSON")
    p.add_argument("--trust", action="store_true", help="run whatever code RUN_DIR's config.json and model.json"
                   " name; without it, only rayps's bundled models and data and your own project's modules run"
                   " (docs/export.md: What a run directory may run)")
    p.add_argument("--all", action="store_true", help="every variant, with defaults for what is not given"
                   " (the student: an MLP of one 32-unit hidden layer)")


def run(args: argparse.Namespace) -> int:
    from ..job.config import read_yaml_mapping
    from .variants import export_run
    from .config import ExportConfig
    from .report import format_table
    from ...settings import build

    raw = dict(read_yaml_mapping(args.config).get("export") or {}) if args.config else {}
    every = args.all

    def section(key: str, flags: dict) -> None:
        given = {k: v for k, v in flags.items() if v is not None}
        if given or (every and key not in raw):
            raw[key] = {**(raw.get(key) or {}), **given}

    section("prune", {"sparsity": args.prune, "scope": args.prune_scope, "finetune_steps": args.prune_finetune})
    section("filter_prune", {"keep": args.filter_prune, "finetune_steps": args.filter_finetune})
    if args.quantize or (every and "quantize" not in raw):
        raw["quantize"] = raw.get("quantize") or {}
    student = {"model": args.student, "model_args": json.loads(args.student_args) if args.student_args else None}
    if every and not args.student and "distill" not in raw:
        student = {"model": "rayps.worker.models:mlp", "model_args": {"hidden": [32]}}
    section("distill", student)
    config = build(ExportConfig, raw, f"{args.config}: export" if args.config else "export")
    report = export_run(args.run_dir, config, args.output, say=print, trust=args.trust)
    print(format_table(report), end="")
    return 0
