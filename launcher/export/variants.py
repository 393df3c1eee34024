"""``psctl export RUN_DIR``: the trained model as files, and its compressed variants, compared.

It reads what a finished job left in its run directory (``model.safetensors``,
``model.json``, ``config.json``, and ``transform.json`` / ``data.json`` for
data read in chunks) and writes ``RUN_DIR/export/``:

- ``teacher/``: the trained model (worker/compress/variants.py says how it is rebuilt);
- ``pruned/``: magnitude pruning to a sparsity, global or per layer, then
  optional fine-tuning through the parameter servers with the mask held;
- ``filter_pruned/``: whole units and channels removed (worker/compress/pruning.py),
  then fine-tuning through the parameter servers;
- ``int8/``: post-training quantization (worker/compress/quantize.py), calibrated on
  training batches where the model has convolutions;
- ``student/`` (and ``student_hard/``): a smaller model distilled from the
  teacher through the parameter servers (worker/compress/distill.py), and the same
  student trained on hard labels alone for the same steps;
- ``config.json``: the trained job's configuration;
- ``report.json``, ``report.md`` and ``report.png`` (launcher/export/report.py):
  accuracy on the job's test split, parameters, bytes on disk and CPU latency
  per batch, each measured on the model as loaded back from its files.

Fine-tuning and distillation are jobs like any other (launcher/job/driver.py):
the same data, optimizer, consistency and transport as the trained job, with
the model built from a picklable ``ModelSpec`` in every worker.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import ConfigError
from ..job.config import CheckpointConfig, JobConfig
from .config import ExportConfig
from ..job.runcode import check_run_code
from ..job.saved_model import load_model, read_meta, save_model
from ...settings import build
from ...worker.data.sources import DataConfig, resolve_data
from ...worker.compress.distill import DistillLoss
from ...worker.loop.embedding import sparse_tables
from ...worker.compress.pruning import apply_masks, filter_prune, magnitude_masks, sparsity_of
from ...worker.compress.quantize import ENGINE, method_for, quantize
from ...worker.compress.variants import ModelSpec, build_distiller, build_model, state_of

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, config: ExportConfig = ExportConfig(), output: str | Path | None = None,
               say: Callable[[str], None] = log.info, trust: bool = False) -> dict:
    """Export ``run_dir``'s model and the variants ``config`` asks for; return the report.

    ``trust``: run whatever code the run directory's config.json and model.json name; without it, only
    rayps's bundled models and data and the user's own code (worker/trust.py).
    """
    from .report import measure, write_report

    run_dir = Path(run_dir)
    out = Path(output) if output else run_dir / "export"
    job, meta = _run_job_config(run_dir, trust)
    teacher = load_model(run_dir, trust)
    if sparse_tables(teacher):
        raise ConfigError(f"{run_dir}: the model has sparse embedding tables (in tables/); export handles dense"
                          " models")
    train, test = _splits(job, run_dir)
    if test is None:
        raise ConfigError(f"{run_dir}: the job has no test split to compare the variants on")
    example = test.batch(np.arange(min(len(test), config.latency_batch)))[0]
    shape = [1, *example.shape[1:]]
    transform = run_dir / "transform.json"
    base = ModelSpec(meta["model"], meta.get("model_args") or {})
    made: dict[str, dict] = {}

    def save(name: str, model, spec: ModelSpec, quantization: dict | None = None, **extra) -> None:
        save_model(out / name, model, spec, shape, quantization, transform, extra or None)
        made[name] = extra
        say(f"export: wrote {out / name}")

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "config.json", out / "config.json")  # the job the models came from
    save("teacher", teacher, base)
    if config.prune is not None:
        p = config.prune
        pruned = copy.deepcopy(teacher)
        masks = magnitude_masks(pruned, p.sparsity, p.scope)
        if p.finetune_steps:
            say(f"export: fine-tuning the {p.sparsity:.0%} pruned model for {p.finetune_steps} steps")
            spec = dataclasses.replace(base, weights=state_of(pruned),
                                       masks={k: v.numpy() for k, v in masks.items()})
            pruned = _train(job, functools.partial(build_model, spec), job.loss, p.finetune_steps, None,
                            out / "_jobs" / "pruned")
            apply_masks(pruned, masks)  # the gradients held them; exactly zero in the file too
        save("pruned", pruned, base, sparsity=round(sparsity_of(pruned), 4), scope=p.scope,
             finetune_steps=p.finetune_steps)
    if config.filter_prune is not None:
        f = config.filter_prune
        smaller, plan = filter_prune(copy.deepcopy(teacher), f.keep, example)
        spec = dataclasses.replace(base, plan=plan)
        if f.finetune_steps:
            say(f"export: fine-tuning the filter-pruned model ({f.keep:.0%} of units) for {f.finetune_steps} steps")
            smaller = _train(job, functools.partial(build_model, dataclasses.replace(spec, weights=state_of(smaller))),
                             job.loss, f.finetune_steps, None, out / "_jobs" / "filter_pruned")
        save("filter_pruned", smaller, spec, keep=f.keep, finetune_steps=f.finetune_steps)
    if config.quantize is not None:
        q = config.quantize
        method = method_for(teacher) if q.method == "auto" else q.method
        batches = [train.batch(np.arange(i * job.batch_size, min(len(train), (i + 1) * job.batch_size)))[0]
                   for i in range(min(q.calibration_batches, max(1, len(train) // job.batch_size)))]
        quantized = quantize(copy.deepcopy(teacher), method, batches if method == "static" else (), example)
        save("int8", quantized, base, {"method": method, "engine": ENGINE},
             calibration_batches=len(batches) if method == "static" else 0)
    if config.distill is not None:
        d = config.distill
        student = ModelSpec(d.model, dict(d.model_args))
        classes = int(teacher(example[:1]).shape[1])
        teacher_spec = dataclasses.replace(base, weights=state_of(teacher))
        say(f"export: distilling {d.model} from the teacher (T={d.temperature}, alpha={d.alpha})")
        distilled = _train(job, functools.partial(build_distiller, student, teacher_spec),
                           DistillLoss(classes, d.temperature, d.alpha), d.max_steps, d.epochs,
                           out / "_jobs" / "student").student
        save("student", distilled, student, temperature=d.temperature, alpha=d.alpha)
        if d.hard_baseline:
            say("export: training the same student on hard labels alone, for the same steps")
            hard = _train(job, functools.partial(build_model, student), "cross_entropy", d.max_steps, d.epochs,
                          out / "_jobs" / "student_hard")
            save("student_hard", hard, student)
    rows = {name: {**measure(out / name, test, config.latency_batch, config.latency_repeats), **extra}
            for name, extra in made.items()}
    report = {"run_dir": str(run_dir.resolve()), "test_rows": len(test), "latency_batch": config.latency_batch,
              "variants": rows, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_report(out, report)
    return report


def _run_job_config(run_dir: Path, trust: bool) -> tuple[JobConfig, dict]:
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    meta = read_meta(run_dir)
    if not meta.get("model"):
        raise ConfigError(f"{run_dir}: the job's model was a callable with no importable name, or took"
                          " arguments that are not plain data; export rebuilds models from 'module:callable' and"
                          " JSON arguments, so give the job's model that way")
    raw = json.loads((run_dir / "config.json").read_text())
    # the job's data, loss and hooks run again; its model is model.json's, which load_model checks
    check_run_code(run_dir, {k: v for k, v in raw.items() if k != "model"}, trust=trust)
    raw["model"], raw["model_args"] = meta["model"], meta.get("model_args") or {}
    try:
        return build(JobConfig, raw, f"{run_dir / 'config.json'}"), meta
    except ConfigError as e:
        raise ConfigError(f"{e} (export reruns the job's data and training settings from its config.json)") from None


def _splits(job: JobConfig, run_dir: Path):
    if isinstance(job.data, DataConfig):  # the saved transform and rows: no statistics pass again
        from ..job.dataprep import prepare_on_ray
        from ...runtime import RAY

        RAY.start(dashboard=False)
        prepared = prepare_on_ray(job, None, run_dir)
        return prepared.train, prepared.test
    if not isinstance(job.data, str) and not isinstance(job.data, dict):
        raise ConfigError(f"the job's data ({job.data!r}) is not something export can load again")
    splits = resolve_data(job.data, job.test_data, seed=job.seed)
    return splits.train, splits.test


def _train(job: JobConfig, model_fn, loss, max_steps: int | None, epochs: int | None, output: Path):
    """Train ``model_fn``'s model as the job trained its own (its data, optimizer, consistency, transport)
    and return it with the trained weights."""
    from ..job.driver import run_job

    config = dataclasses.replace(job, model=model_fn, model_args={}, loss=loss, max_steps=max_steps,
                                 epochs=epochs or job.epochs, checkpoint=CheckpointConfig(), target_loss=None,
                                 eval_every_s=0.0, chaos=type(job.chaos)(), debug=type(job.debug)())
    return run_job(config, output, progress=None, dashboard=False, report=False).model
