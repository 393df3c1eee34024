"""Local steps against bsp at the same number of examples: the default job and a small transformer.

    python benchmarks/local_steps.py [--jobs default,transformer] [--inner-steps 8,32,128]
                                     [--forms sync,async,streaming] [--seeds 3] [--output FILE]

Each run is a full job on one local Ray instance (2 workers, 2 shards), once
per seed: bsp with the job's optimizer, and for each H and form the same job
with ``local_steps.inner_steps: H`` and that optimizer as the inner one
(same name and lr), so every run trains the same examples with the same
per-batch optimizer. Forms: ``sync`` is bsp over outer steps, ``async`` asp
over outer steps (delayed Nesterov), ``streaming`` bsp with the model synced
in 4 fragments in turn; ``sync-momentum-0.9`` is sync with DiLoCo's outer
momentum, ``async-plain-nesterov`` async without the delayed momentum. The default job is digits on the MLP (30 epochs, Adam 1e-3);
the transformer is ``order_tokens`` (8 epochs, batch 32, Adam 2e-3, as
benchmarks/stale_models.py). One JSON line per run, then a table: test
accuracy per seed, and each form's largest shortfall against bsp's run of
the same seed (one test example is 0.28 points on digits, 0.1 on
order_tokens).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import rayps

JOBS = {
    "default": ({"epochs": 30}, {"name": "adam", "lr": 1e-3}),
    "transformer": ({"model": "rayps.worker.models:transformer", "data": "rayps.worker.datasets:order_tokens",
                     "epochs": 8, "batch_size": 32}, {"name": "adam", "lr": 2e-3}),
}
FORMS = {"sync": ({"mode": "bsp"}, {}), "async": ({"mode": "asp"}, {}),
         "streaming": ({"mode": "bsp"}, {"fragments": 4}),
         # what the defaults replaced: DiLoCo's outer momentum 0.9 under bsp, and asynchronous pushes with plain
         # Nesterov momentum (no delay) at the same lr and momentum as delayed Nesterov's
         "sync-momentum-0.9": ({"mode": "bsp"}, {"outer_optimizer": {"momentum": 0.9}}),
         "async-plain-nesterov": ({"mode": "asp"}, {"outer_optimizer": {"name": "sgd", "lr": 0.35, "momentum": 0.9,
                                                                        "nesterov": True}})}


def run(job: str, seed: int, form: str | None, inner_steps: int | None) -> dict:
    base, optimizer = JOBS[job]
    config = {**base, "workers": 2, "servers": 2, "seed": seed, "eval_every_s": 0,
              "checkpoint": {"enabled": False}}
    if form is None:
        config.update(consistency={"mode": "bsp"}, optimizer=optimizer)
    else:
        consistency, local = FORMS[form]
        config.update(consistency=consistency,
                      local_steps={"inner_steps": inner_steps, "inner_optimizer": optimizer, **local})
    with tempfile.TemporaryDirectory() as out:
        s = rayps.Job(**config).run(output=out, progress=False, dashboard=False, report=False).summary
    return {"job": job, "seed": seed, "form": form or "bsp", "inner_steps": inner_steps,
            "test_accuracy": s["test_accuracy"], "bytes_per_example": s["compression"]["bytes_per_example"],
            "outer_optimizer": s.get("local_steps", {}).get("outer_optimizer")}


def table(rows: list[dict]) -> str:
    lines = ["| job | form | H | accuracy per seed | largest shortfall vs bsp (points) | bytes/example |",
             "|---|---|---|---|---|---|"]
    bsp = {(r["job"], r["seed"]): r["test_accuracy"] for r in rows if r["form"] == "bsp"}
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["job"], r["form"], r["inner_steps"]), []).append(r)
    for (job, form, h), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        accs = ", ".join(f"{r['test_accuracy']:.4f}" for r in runs)
        short = "" if form == "bsp" else \
            f"{max(100 * (bsp[(job, r['seed'])] - r['test_accuracy']) for r in runs):+.2f}"
        lines.append(f"| {job} | {form} | {h or ''} | {accs} | {short} | {runs[0]['bytes_per_example']:,.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", default="default,transformer")
    parser.add_argument("--inner-steps", default="8,32,128")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", help="also write the JSON lines here")
    args = parser.parse_args()
    rows = []
    for job in args.jobs.split(","):
        for seed in range(args.seeds):
            plan = [(None, None)] + [(form, int(h)) for h in args.inner_steps.split(",")
                                     for form in args.forms.split(",")]
            for form, h in plan:
                row = run(job, seed, form, h)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.output:
                    with open(args.output, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
