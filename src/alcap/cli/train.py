"""`alcap train | experiment | sweep`: training runs and the paper's experiments."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from .common import add_jobs_arg


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a captioning model from a YAML config",
                       description="Train ALCAP (or the BART / BART-fusion baselines) as a config file says, with "
                                   "Accelerate: the same command on CPU, one GPU, or many under `accelerate launch`. "
                                   "Rerunning it on the same output directory resumes from the last saved state.")
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 --set model.alcap.alpha=0; repeatable")
    p.add_argument("--output-dir", metavar="DIR", help="run directory (default: output_dir of the config)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config import load_config
    from ..train.loop import train

    config = load_config(args.config, args.set)
    if args.output_dir:
        config.output_dir = args.output_dir
    try:
        summary = train(config, progress=not args.quiet)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        latest = Path(config.output_dir) / "states" / "latest"
        kept = (f"the last complete resume state, states/{latest.read_text().strip()}, was kept"
                if latest.is_file() else "no resume state had been saved yet")
        print(f"alcap train: error: no space left on device while writing {exc.filename or config.output_dir}; "
              f"{kept}. Free some space and run the same command again to resume", file=sys.stderr)
        return 2
    if not summary["main_process"]:
        return 0  # under several processes one summary is enough
    best = ", ".join(f"{k} {v:.4f}" for k, v in summary["best"].items() if v is not None) or "no validation rows"
    at = f" at epoch {summary['best_epoch']}" if summary.get("best_epoch") is not None else ""
    print(f"trained {summary['epochs']} epochs ({summary['global_step']} steps) in {summary['seconds']} s; "
          f"best {best}{at} (best/)")
    print(f"run directory: {summary['output_dir']} (best/ and last/ are loadable models, log.jsonl the curves)")
    return 0


def add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="train + evaluate every method for every seed, then write the paper's tables",
                       description="Run an experiment file (configs/si-*.yaml, configs/demo.yaml): each method for each "
                                   "seed is trained into OUTPUT_DIR/METHOD/seed-SEED and evaluated (captioning metrics and "
                                   "text-to-music retrieval). Finished runs are skipped and interrupted ones resume, so "
                                   "rerunning the command continues where it stopped. Then Table 1 (ROUGE-1/2/L, METEOR: "
                                   "mean ± std over seeds, bootstrap 95% interval over songs) and Table 2 (precision@k, "
                                   "recall@k) are written as Markdown, CSV and LaTeX to OUTPUT_DIR/tables.")
    p.add_argument("config", metavar="EXPERIMENT", help="experiment YAML (base config + methods)")
    p.add_argument("--seeds", type=int, nargs="+", default=[2020], metavar="SEED", help="seeds (default: 2020)")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods, and the stages they start from (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run, e.g. --set train.epochs=2; repeatable")
    p.add_argument("--output-dir", metavar="DIR", help="experiment directory (default: output_dir of the file)")
    add_jobs_arg(p)
    p.add_argument("--tables-only", action="store_true", help="only (re)write the tables from finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args) -> int:
    from ..experiment import load_experiment, run_all, run_experiment, write_tables

    experiment = load_experiment(args.config, output_dir=args.output_dir, overrides=args.set)
    if args.methods:
        experiment.select(args.methods)
    if not experiment.reported_methods():  # only stages (e.g. --methods text-pretrain): nothing to tabulate
        if not args.tables_only:
            run_all(experiment, args.seeds, progress=not args.quiet, overrides=args.set, jobs=args.jobs)
        runs = [str(experiment.run_dir(m, s)) for s in args.seeds for m in experiment.methods]
        print(f"trained {', '.join(runs)} (a stage other methods start from; not evaluated or tabulated)")
        return 0
    if args.tables_only:
        result = write_tables(experiment, args.seeds)
    else:
        result = run_experiment(experiment, args.seeds, progress=not args.quiet, overrides=args.set,
                                jobs=args.jobs)
    tables = Path(result["tables_dir"])
    print((tables / "table1_captioning.md").read_text(encoding="utf-8"))
    print((tables / "table2_retrieval.md").read_text(encoding="utf-8"))
    print(f"tables (Markdown, CSV, LaTeX) and results.json in {tables}")
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="alpha ablation: train and evaluate ALCAP for each alpha, plot scores vs alpha",
                       description="The paper's alpha ablation (Figures 5-6): the experiment's ALCAP method is trained "
                                   "and evaluated once per alpha and seed into OUTPUT_DIR/sweep/alpha-A/seed-S (alpha 0 "
                                   "is BART-fusion), then sweep.csv, sweep_captioning.png and sweep_retrieval.png "
                                   "(log-scaled alpha axis that still shows 0) and the tables are written. Finished runs "
                                   "are skipped.")
    p.add_argument("config", metavar="EXPERIMENT", help="experiment YAML (configs/si-*.yaml, configs/demo.yaml)")
    p.add_argument("--alpha", type=float, nargs="+", required=True, metavar="A",
                   help="contrastive weights to try, e.g. 0 2e-4 2e-3 2e-2 2e-1 2 20")
    p.add_argument("--seeds", type=int, nargs="+", default=[2020], metavar="SEED", help="seeds (default: 2020)")
    p.add_argument("--method", default="alcap", help="method of the experiment to vary (default: alcap)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run; repeatable")
    p.add_argument("--output-dir", metavar="DIR", help="experiment directory (default: output_dir of the file)")
    add_jobs_arg(p)
    p.add_argument("--tables-only", action="store_true", help="only redraw from finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from ..experiment import load_experiment, run_all, sweep_experiment, write_sweep, write_tables

    stages, sweep = sweep_experiment(load_experiment(args.config, output_dir=args.output_dir, overrides=args.set),
                                     args.alpha, args.method)
    if not args.tables_only:
        run_all(stages, args.seeds, progress=not args.quiet, overrides=args.set, jobs=args.jobs)
        run_all(sweep, args.seeds, progress=not args.quiet, overrides=args.set, jobs=args.jobs)
    result = write_tables(sweep, args.seeds)
    written = write_sweep(sweep, args.alpha, result["methods"])
    print((Path(result["tables_dir"]) / "table1_captioning.md").read_text(encoding="utf-8"))
    print(f"sweep: {written['csv']}; figures: {', '.join(written['figures'])}")
    return 0
