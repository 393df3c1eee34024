"""psctl: the command line.

    psctl run [CLUSTER_YAML] [--set KEY=VALUE ...] [--output DIR]  /  psctl run --resume RUN_DIR [--trust]
    psctl report RUN_DIR [--x steps|epochs|seconds]
    psctl bench [--quick] [--output DIR] [--models small,large] [--transports shm,grpc,ray] [--modes asp,bsp,...] [--no-sparse] [--no-wire]
    psctl bench --cost
    psctl bench --table-memory 10,50,100 [--steps S]
    psctl bench --nodes N [--link 10gbit,1gbit] [--steps S] [--layouts colocated,separate] [--models large] [--modes asp,bsp,...]
    psctl bench --nodes N --link 1gbit,100mbit --local-steps 8,32 [--steps S] [--target-loss L]
    psctl export RUN_DIR [--trust] [--all] [--prune S] [--filter-prune KEEP] [--quantize] [--student MODULE:CALLABLE] [--config F]
    psctl serve [SERVE_YAML] [--host H] [--port P] [--size N] [--workers N] [--token-file F] [--set KEY=VALUE ...]
    psctl up CLUSTER_YAML [--dry-run] [--wait S]  /  psctl down CLUSTER_YAML
    psctl submit [CLUSTER_YAML] [--address URL] [--set KEY=VALUE ...] [--output DIR] [--no-wait]
    psctl status [CLUSTER_YAML]  /  psctl logs JOB [CLUSTER_YAML] [--follow]  /  psctl stop JOB [CLUSTER_YAML]
    psctl data profile PATH [--label COL] [--outliers iqr|zscore|none] [--json]
    psctl data generate OUT --rows N [--files F] [--missing P] [--outliers P]

Any failure ends in one line on stderr and a non-zero exit: 2 for an error
rayps raised on purpose (a bad config, a failed job), 1 for anything else,
130 for Ctrl-C. Past the config checks, the traceback goes to a log file the
line names, never to the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback

from ..errors import ConfigError, PSError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psctl", description="Parameter-server training on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job on a local single-node Ray instance")
    run.add_argument("config", nargs="?", help="cluster.yaml whose job: section describes the job (default: the bundled digits job)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a job key, e.g. --set consistency.mode=bsp (repeatable)")
    run.add_argument("--output", help="run directory to write (default: runs/<time>-<mode>)")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or crashed job from the newest valid"
                     " checkpoint in RUN_DIR (its config.json is the job; --set may change it)")
    run.add_argument("--trust", action="store_true", help="with --resume: run whatever code RUN_DIR's config.json"
                     " names; without it, only rayps's bundled models and data and your own project's modules run"
                     " (docs/export.md: What a run directory may run)")

    bench = sub.add_parser("bench", help="rayps side by side with DDP and a Ray-docs-style parameter server")
    bench.add_argument("--quick", action="store_true", help="the small model, shm, asp and bsp only (CI-sized)")
    bench.add_argument("--output", help="run directory to write (default: runs/bench-<time>)")
    bench.add_argument("--models", help="comma-separated: small, large")
    bench.add_argument("--transports", help="comma-separated: shm, grpc, ray")
    bench.add_argument("--modes", help="comma-separated: asp, 'ssp s=1', 'ssp s=2', bsp")
    bench.add_argument("--wire", action=argparse.BooleanOptionalAction, default=None,
                       help="the compression rows over a 100 Mbit/s link (default: on, off with --quick)")
    bench.add_argument("--nodes", type=int, help="between machines: N worker machines, each a network namespace"
                       " on shaped links with a Ray node (needs root; launcher/bench/netns.py); only those rows run")
    bench.add_argument("--link", default="10gbit,1gbit", help="with --nodes: each link's rate, comma-separated"
                       " (default: 10gbit,1gbit)")
    bench.add_argument("--layouts", help="with --nodes: comma-separated: colocated (a shard on each worker's node),"
                       " separate (every shard on a machine of its own); default: both")
    bench.add_argument("--local-steps", help="with --nodes: comma-separated H values: only the rows of local steps"
                       " (sync and async) against bsp, asp and DDP, time to a target loss and bytes per example")
    bench.add_argument("--target-loss", type=float, help="with --local-steps: the training loss every row is timed"
                       " to (default 0.3)")
    bench.add_argument("--cost", action="store_true", help="only the rows of how cost grows: a step's overhead"
                       " against shards and workers (1 to 8), one shard's pushes/s against clients (1 to 64)")
    bench.add_argument("--steps", type=int, help="steps per worker of every model row (default: each model's own)")
    bench.add_argument("--table-memory", help="comma-separated percentages: only the rows of a sparse table whose"
                       " shards keep that share of its hot set in memory (the rest on disk), against one torch process")
    bench.add_argument("--no-sparse", action="store_true",
                       help="skip the sparse-table rows (a 10M x 16 embedding table; ~2 GB for the torch baseline)")

    report = sub.add_parser("report", help="draw a run directory's plots and TensorBoard events again")
    report.add_argument("run_dir", help="a run directory (holds summary.json and history.jsonl)")
    report.add_argument("--x", choices=("steps", "epochs", "seconds"), default="steps",
                        help="the plots' x axis (default: steps per worker)")

    serve = sub.add_parser("serve", help="serve one parameter shard over gRPC, outside Ray")
    serve.add_argument("config", nargs="?", help="YAML file of serve settings (launcher/serve.py: ServeConfig)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 0: any free port, printed)")
    serve.add_argument("--size", type=int, help="float32 parameters in the shard")
    serve.add_argument("--workers", type=int, help="worker ids 0..N-1 may register")
    serve.add_argument("--token-file", help="file holding the bearer token (created with a new token if missing)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any other setting, e.g. --set optimizer.name=sgd --set consistency.mode=ssp")

    # Cluster commands (launcher/cluster/commands.py): Ray's cluster launcher and the Ray Jobs API.
    up = sub.add_parser("up", help="provision the Ray cluster of CLUSTER_YAML (ray up) with token auth")
    up.add_argument("config", help="cluster.yaml: a Ray cluster-launcher config plus job:")
    up.add_argument("--dry-run", action="store_true", help="check, write and print the config for ray up; start nothing")
    up.add_argument("--wait", type=float, default=300, metavar="SECONDS",
                    help="how long every machine a local-provider file lists may take to join (default 300)")
    sub.add_parser("down", help="tear down the Ray cluster of CLUSTER_YAML (ray down)").add_argument("config")
    submit = sub.add_parser("submit", help="run the job on a running Ray cluster (Jobs API) and stream its logs")
    submit.add_argument("config", nargs="?", help="cluster.yaml whose job: section is run (default: the bundled job)")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a job key (repeatable); forwarded to the job")
    submit.add_argument("--output", help="run directory to write on the head node (give an absolute path:"
                        " a relative one lands in the job's temporary working_dir)")
    submit.add_argument("--working-dir", help="directory uploaded as the job's working_dir (default: this project)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    status = sub.add_parser("status", help="list the jobs on a Ray cluster")
    status.add_argument("config", nargs="?", help="cluster.yaml (for its address)")
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    data = sub.add_parser("data", help="profile a data set without training, or write a synthetic one")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    profile = data_sub.add_parser("profile", help="print the quality report of PATH (Parquet or a directory)")
    profile.add_argument("path")
    profile.add_argument("--label", default="label")
    profile.add_argument("--outliers", default="iqr", choices=("iqr", "zscore", "none"),
                         help="the rule whose outliers are counted (default iqr)")
    profile.add_argument("--threshold", type=float, default=None)
    profile.add_argument("--chunk-rows", type=int, default=65536)
    profile.add_argument("--json", action="store_true", help="print quality.json instead of the table")
    profile.add_argument("--output", default=None, help="also write quality.json and quality.png here")
    gen = data_sub.add_parser("generate", help="write a synthetic classification set of Parquet files")
    gen.add_argument("out")
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--features", type=int, default=16)
    gen.add_argument("--classes", type=int, default=4)
    gen.add_argument("--files", type=int, default=8)
    gen.add_argument("--row-group-rows", type=int, default=250_000)
    gen.add_argument("--missing", type=float, default=0.0, help="fraction of feature cells made null")
    gen.add_argument("--outliers", type=float, default=0.0, help="fraction of feature cells set far out")
    gen.add_argument("--seed", type=int, default=0)
    from .export.cli import add_parser as add_export

    add_export(sub)
    stop = sub.add_parser("stop", help="stop a job")
    scale = sub.add_parser("scale", help="add or remove workers of a running job (without restarting it), or"
                           " change its number of shards (stop-the-world, from a checkpoint)")
    scale.add_argument("--workers", type=int, help="how many workers the job should have")
    scale.add_argument("--servers", type=int, help="how many shards: the job cuts a checkpoint, stops, and goes on"
                       " from it on this many (resharded)")
    for p in (logs, stop, scale):
        p.add_argument("job", help="submission id, as submit and status print it")
        p.add_argument("config", nargs="?", help="cluster.yaml (for its address)")
    here = sub.add_parser("scale-here", help="(internal: what `psctl scale` runs on the cluster)")
    here.add_argument("job")
    here.add_argument("--workers", type=int)
    here.add_argument("--servers", type=int)
    nodes_here = sub.add_parser("wait-nodes", help="(internal: what `psctl up` runs on the head)")
    nodes_here.add_argument("ips", nargs="+")
    nodes_here.add_argument("--timeout", type=float, required=True)
    for p in (submit, status, logs, stop, scale):
        p.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: the"
                       " local-provider head_ip of CLUSTER_YAML, else $RAY_ADDRESS, else http://127.0.0.1:8265)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from .job.config import load_job_config
    from .job.driver import run_job
    from .job.terminal import ProgressLine

    if args.resume:
        from .job.resume import resumed_config
        if args.config or args.output:
            raise ConfigError("--resume RUN_DIR takes the job and the run directory from RUN_DIR:"
                              " give neither a config nor --output")
        config, output = resumed_config(args.resume, args.overrides, trust=args.trust), args.resume
    else:
        if args.trust:
            raise ConfigError("--trust is for --resume RUN_DIR, whose config.json names the code it runs; a"
                              " config of your own runs as it is")
        config, output = load_job_config(args.config, args.overrides), args.output  # errors before Ray starts
    result = run_job(config, output=output, progress=ProgressLine(), dashboard=not args.no_dashboard)
    s = result.summary
    print(json.dumps({k: s[k] for k in ("test_accuracy", "test_loss", "max_clock_gap", "staleness_histogram",
                                        "steps", "pushes_applied", "pushes_dropped", "samples_per_s", "wall_s")},
                     indent=2))
    for name, t in s.get("sparse_tables", {}).items():
        print(f"sparse table {name!r} ({t['mode']}): {t['rows']:,} rows on the shards, {t['bytes']:,} bytes,"
              f" {t['rows_pulled']:,} rows pulled, {t['rows_pushed']:,} pushed")
    acc = s["test_accuracy"]
    print(f"test accuracy {acc:.4f}" if acc is not None else f"test loss {s['test_loss']:.4f}")
    if s.get("test_auc") is not None:
        reference = s.get("reference_auc")
        print(f"test AUC {s['test_auc']:.4f}" + (f"; the true click model's AUC {reference:.4f};"
                                                 f" ratio {s['auc_ratio']:.4f}" if reference else ""))
    print(f"run directory: {result.run_dir}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench.runner import MODELS, MODES, run_bench

    def listed(text, allowed, what):
        if not text:
            return None
        names = [n.strip() for n in text.split(",") if n.strip()]
        for n in names:
            if allowed is not None and n not in allowed:
                raise ConfigError(f"--{what}: unknown {n!r} (allowed: {', '.join(allowed)})")
        return names

    if args.table_memory:
        from .bench.tiers import run_tier_bench

        out, rows = run_tier_bench([int(p) for p in listed(args.table_memory, None, "table-memory")], args.output,
                                   command=shlex.join(["psctl", *args.argv]), steps=args.steps)
        print((out / "bench.md").read_text(), end="")
        print(f"run directory: {out}")
        return 0
    if args.nodes is not None and args.local_steps:
        from .bench.local import run_local_bench

        out, rows = run_local_bench(args.nodes, listed(args.link, None, "link"),
                                    [int(h) for h in listed(args.local_steps, None, "local-steps")], args.output,
                                    command=shlex.join(["psctl", *args.argv]), steps=args.steps,
                                    target_loss=args.target_loss)
        print((out / "bench.md").read_text(), end="")
        print(f"run directory: {out}")
        return 0
    if args.nodes is not None:
        from .bench.cluster import LAYOUTS, run_cluster_bench

        out, rows = run_cluster_bench(args.nodes, listed(args.link, None, "link"),
                                      listed(args.layouts, list(LAYOUTS), "layouts"),
                                      listed(args.models, list(MODELS), "models"),
                                      listed(args.modes, list(MODES), "modes"), args.output,
                                      command=shlex.join(["psctl", *args.argv]), steps=args.steps,
                                      sparse=not args.no_sparse)
        print((out / "bench.md").read_text(), end="")
        print(f"run directory: {out}")
        return 0
    out, rows = run_bench(args.quick, args.output, listed(args.models, list(MODELS), "models"),
                          listed(args.transports, ["shm", "grpc", "ray"], "transports"),
                          listed(args.modes, list(MODES), "modes"), steps=args.steps, sparse=not args.no_sparse,
                          wire=args.wire, only_cost=args.cost,
                          command=shlex.join(["psctl", *args.argv]))  # bench.json says what made its rows
    print((out / "bench.md").read_text(), end="")
    print(f"run directory: {out}")
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "generate":
        from .data.generate import generate

        truth = generate(args.out, args.rows, args.features, args.classes, args.files, args.row_group_rows,
                         args.missing, args.outliers, args.seed)
        print(f"wrote {truth['rows']:,} rows in {truth['files']} files to {args.out} (truth.json beside them)")
        return 0
    from pathlib import Path

    from .data.report import format_report, quality_report, write_quality
    from ..worker.data.config import data_config
    from ..worker.data.pipeline import prepare

    # Profiling only reports: missing values are counted (filled with the mean, so they never count as
    # outliers too) and outliers are counted at the rule's fences, nothing is dropped or clipped.
    config = data_config({"path": args.path, "label": args.label, "chunk_rows": args.chunk_rows,
                          "test_fraction": 0, "quality": {
                              "missing": {"policy": "mean"},
                              "outliers": {"rule": args.outliers, "threshold": args.threshold, "policy": "report"}}},
                         "psctl data profile")
    prepared = prepare(config, parallel=os.cpu_count() or 2)
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        report = write_quality(Path(args.output), prepared)
    else:
        report = quality_report(prepared)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .serve import load_serve_config, serve

    flags = {"host": args.host, "port": args.port, "size": args.size, "workers": args.workers,
             "token_file": args.token_file}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    config = load_serve_config(args.config, overrides)
    asyncio.run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "data":
            return _data(args)
        if args.command == "export":
            from .export.cli import run as export

            return export(args)
        from .cluster.commands import COMMANDS

        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        if args.command == "report":
            from .job.report import write_report

            for path in write_report(args.run_dir, x=args.x):
                print(path)
            return 0
    except ConfigError as e:  # caught before anything started: the line says it all
        print(f"psctl: error: {e}", file=sys.stderr)
        return 2
    except PSError as e:
        print(f"psctl: error: {_one_line(e)} (log: {_write_log(e)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psctl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a library's error we did not foresee: still one line
        print(f"psctl: error: unexpected {type(e).__name__}: {_one_line(e)} (log: {_write_log(e)})",
              file=sys.stderr)
        return 1
    return 1


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _write_log(error: BaseException) -> str:
    """Write the traceback (and where Ray keeps the actors' logs) to a file; return its path."""
    folder = os.path.join(tempfile.gettempdir(), "rayps-logs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"psctl-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(path, "w") as log:
        log.write(f"psctl {' '.join(sys.argv[1:])}\n\n")
        log.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        ray_logs = _ray_log_dir()
        if ray_logs:
            log.write(f"\nthe actors' own logs: {ray_logs}\n")
    return path


def _ray_log_dir() -> str | None:
    try:
        import ray

        if ray.is_initialized():
            from ray._private.worker import _global_node  # no public accessor for the session dir
            return os.path.join(_global_node.get_session_dir_path(), "logs")
    except Exception:  # a private API: losing the hint must never hide the error
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
