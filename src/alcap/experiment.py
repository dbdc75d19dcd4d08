"""`alcap experiment`: every method x every seed, trained, evaluated and tabulated as in the paper.

An experiment file is a run config (`base`) plus named methods, each a set of overrides:

    name: si-full
    output_dir: runs/si-full
    base: {data: ..., model: ..., train: ..., generation: ...}   # like a run config
    methods:
      bart:        {model.alcap.use_music: false, data.embeddings: null}
      bart-fusion: {model.alcap.alpha: 0.0}
      alcap:       {model.alcap.alpha: 0.02}
    evaluate: {split: test, retrieval: true}

String values may use {output_dir} and {seed}, so a method can start from another method's
model of the same seed (e.g. `model.backbone: "{output_dir}/bart/seed-{seed}/best"`); a method
with `report: false` among its keys is only trained (a stage others start from), not evaluated
and not in the tables.
Runs live in OUTPUT_DIR/METHOD/seed-SEED; a finished run (evaluated) is skipped, an unfinished
one resumes. Tables go to OUTPUT_DIR/tables/.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .config import RunConfig, apply_override, from_dict, read_yaml
from .evaluate import METRICS_FILE, PREDICTIONS_FILE

logger = logging.getLogger("alcap.experiment")
CAPTION_COLUMNS = (("rouge1_recall", "ROUGE-1"), ("rouge2_recall", "ROUGE-2"), ("rougeL_recall", "ROUGE-L"),
                   ("meteor", "METEOR"))
RETRIEVAL_KS = (1, 5, 10)
RETRIEVAL_COLUMNS = tuple((f"{name}@{k}", f"{name[0].upper()}@{k}") for name in ("precision", "recall")
                          for k in RETRIEVAL_KS)


@dataclass
class EvaluateSettings:
    split: str = "test"
    retrieval: bool = True
    retrieval_model: str | None = None
    query_seed: int = 0


@dataclass
class Experiment:
    name: str
    output_dir: Path
    base: dict
    methods: dict[str, dict]
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)

    def starts_from(self, method: str) -> list[str]:
        """The methods whose runs `method` reads ("{output_dir}/NAME/..." in one of its values)."""
        values = [v for v in self.methods[method].values() if isinstance(v, str)]
        return [m for m in self.methods if m != method and any(f"{{output_dir}}/{m}/" in v for v in values)]

    def select(self, names: list[str]) -> None:
        """Keep only `names`, plus every method they start from (trained, not reported unless named)."""
        unknown = sorted(set(names) - set(self.methods))
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; this experiment has {', '.join(self.methods)}")
        needed, todo = set(), list(names)
        while todo:
            method = todo.pop()
            if method not in needed:
                needed.add(method)
                todo += self.starts_from(method)
        self.methods = {m: (o if m in names else {**o, "report": False})
                        for m, o in self.methods.items() if m in needed}

    def reported_methods(self) -> list[str]:
        return [m for m, o in self.methods.items() if o.get("report", True)]

    def run_dir(self, method: str, seed: int) -> Path:
        return self.output_dir / method / f"seed-{seed}"

    def run_config(self, method: str, seed: int, overrides: list[str] | None = None) -> RunConfig:
        """The method's config for this seed, with command-line `overrides` applied last, checked."""
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; this experiment has {', '.join(self.methods)}")
        config = from_dict(RunConfig, self.base)
        for key, value in self.methods[method].items():
            if key == "report":
                continue
            if isinstance(value, str):
                value = value.format(output_dir=self.output_dir, seed=seed)
            apply_override(config, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        config.train.seed = seed
        config.output_dir = str(self.run_dir(method, seed))
        for assignment in overrides or []:
            apply_override(config, assignment)
        config.check()
        return config


def load_experiment(path: str | Path, output_dir: str | None = None, overrides: list[str] | None = None) -> Experiment:
    """An experiment file, every method's config checked (with `overrides`) before anything runs."""
    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - {"name", "output_dir", "base", "methods", "evaluate"})
    if unknown:
        raise ValueError(f"{path}: unknown experiment key(s) {', '.join(unknown)}; "
                         "valid: name, output_dir, base, methods, evaluate")
    if not data.get("methods"):
        raise ValueError(f"{path}: an experiment needs `methods` (name: overrides)")
    experiment = Experiment(name=data.get("name", path.stem), output_dir=Path(output_dir or data.get("output_dir") or
                                                                            f"runs/{path.stem}"),
                            base=data.get("base") or {}, methods={m: dict(o or {}) for m, o in data["methods"].items()},
                            evaluate=from_dict(EvaluateSettings, data.get("evaluate")))
    for method in experiment.methods:  # fail now on a typo, not after hours of training
        experiment.run_config(method, 0, overrides)
    return experiment


def run_experiment(experiment: Experiment, seeds: list[int], progress: bool = True,
                   overrides: list[str] | None = None, jobs: int = 1) -> dict:
    """Train and evaluate what is missing, then write the tables; returns the aggregate."""
    run_all(experiment, seeds, progress, overrides, jobs=jobs)
    return write_tables(experiment, seeds)


def run_all(experiment: Experiment, seeds: list[int], progress: bool = True, overrides: list[str] | None = None,
            jobs: int = 1, threads_per_job: int | None = None) -> None:
    """Train every method x seed that is not finished and evaluate the reported ones.

    With `jobs` > 1, runs that do not depend on each other (other methods, other seeds) train at
    the same time in worker processes of `threads_per_job` torch threads each (default: the
    cores divided among the jobs). Small models use extra threads poorly, so runs side by side
    finish sooner than one run with all the threads (the demo's three fine-tunes on 2 cores: 240 s
    with jobs=3 against 294 s one at a time). A run starts once the runs it starts from are done;
    a failed run costs only the runs that start from it, and the first failure is raised at the end.
    """
    todo = [(method, seed) for seed in seeds for method in experiment.methods if not _finished(experiment, method, seed)]
    for method, seed in [(m, s) for s in seeds for m in experiment.methods if (m, s) not in todo]:
        logger.info("%s seed %d: finished, skipped", method, seed)
    if jobs <= 1 or len(todo) <= 1:
        for method, seed in todo:
            _run_one(experiment, method, seed, overrides, progress)
        return
    _run_parallel(experiment, todo, overrides, jobs, threads_per_job or max(1, _cores() // jobs), progress)


def _finished(experiment: Experiment, method: str, seed: int) -> bool:
    run = experiment.run_dir(method, seed)
    if method not in experiment.reported_methods():  # a stage is only trained
        return (run / "last").exists()
    return (run / "best" / f"eval-{experiment.evaluate.split}" / METRICS_FILE).exists()


def _run_one(experiment: Experiment, method: str, seed: int, overrides: list[str] | None, progress: bool) -> None:
    from .evaluate import evaluate_model
    from .train.loop import train

    run = experiment.run_dir(method, seed)
    config = experiment.run_config(method, seed, overrides)
    if not (run / "last").exists():  # train() resumes a killed run from its last state
        logger.info("%s seed %d: training into %s", method, seed, run)
        train(config, progress=progress)
    if method not in experiment.reported_methods():
        return
    logger.info("%s seed %d: evaluating %s", method, seed, run / "best")
    evaluate_model(run / "best", split=experiment.evaluate.split, progress=progress,
                   retrieval=experiment.evaluate.retrieval, retrieval_model=experiment.evaluate.retrieval_model,
                   query_seed=experiment.evaluate.query_seed)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_worker(threads: int, log_level: int) -> None:
    import torch

    from .utils import die_with_parent

    die_with_parent()  # a killed `alcap experiment` must not leave trainings behind
    torch.set_num_threads(threads)
    package = logging.getLogger("alcap")  # not the root: other libraries' INFO lines stay quiet
    if not package.handlers:  # a spawned process starts without the CLI's logging
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("alcap: %(message)s"))
        package.addHandler(handler)
        package.propagate = False
    package.setLevel(log_level)


def _run_parallel(experiment: Experiment, todo: list[tuple[str, int]], overrides: list[str] | None, jobs: int,
                  threads: int, progress: bool) -> None:
    import multiprocessing
    import time
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    def needs(run: tuple[str, int]) -> set[tuple[str, int]]:
        return {(m, run[1]) for m in experiment.starts_from(run[0])} & set(todo)

    logger.info("%d runs, up to %d at a time, %d torch thread(s) each", len(todo), jobs, threads)
    waiting, running, done, failed = list(todo), {}, set(), {}
    bar = tqdm(total=len(todo), unit="run", desc="runs", disable=not progress)
    # spawn, not fork: a forked child would inherit the parent's torch thread pools and locks.
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads, logger.getEffectiveLevel()))
    try:
        while waiting or running:
            for run in [r for r in waiting if needs(r) & set(failed)]:
                waiting.remove(run)
                failed[run] = None  # not tried: a run it starts from failed
                logger.error("%s seed %d: not run, it starts from a run that failed", *run)
                bar.update(1)
            for run in [r for r in waiting if needs(r) <= done][:max(0, jobs - len(running))]:
                waiting.remove(run)
                running[pool.submit(_run_one, experiment, run[0], run[1], overrides, False)] = (run, time.monotonic())
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run, started = running.pop(future)
                error = future.exception()
                if error is None:
                    done.add(run)
                    logger.info("%s seed %d: done in %.0f s", run[0], run[1], time.monotonic() - started)
                else:
                    failed[run] = error
                    logger.error("%s seed %d: failed: %s", run[0], run[1], error)
                bar.update(1)
    finally:  # on Ctrl-C nothing new starts; the workers die with this process and resume next time
        pool.shutdown(wait=False, cancel_futures=True)
    bar.close()
    errors = [e for e in failed.values() if e is not None]
    if errors:
        raise errors[0]


def collect(experiment: Experiment, seeds: list[int]) -> dict[str, list[dict]]:
    """method -> the evaluated runs of those seeds: {"seed", "metrics", "per_song"}."""
    from .metrics.captioning import caption_scores

    out: dict[str, list[dict]] = {}
    for method in experiment.reported_methods():
        for seed in seeds:
            eval_dir = experiment.run_dir(method, seed) / "best" / f"eval-{experiment.evaluate.split}"
            if not (eval_dir / METRICS_FILE).exists():
                continue
            metrics = json.loads((eval_dir / METRICS_FILE).read_text())
            rows = [json.loads(line) for line in (eval_dir / PREDICTIONS_FILE).read_text().splitlines()]
            if all("scores" in r for r in rows):  # written by `alcap evaluate`
                per_song = {key: [r["scores"][key] for r in rows] for key in rows[0]["scores"]}
            else:  # evaluated by an older alcap: score again
                per_song = caption_scores([r["prediction"] for r in rows], [r["references"] for r in rows])[1]
            out.setdefault(method, []).append({"seed": seed, "metrics": metrics, "per_song": per_song,
                                               "song_ids": [r["song_id"] for r in rows]})
    return out


def aggregate(runs: dict[str, list[dict]]) -> dict:
    """Per method and metric: mean, std over seeds (ddof 1), and a bootstrap 95% interval over test
    songs of the seed-averaged per-song score."""
    from .metrics.captioning import bootstrap_interval

    table: dict[str, dict] = {}
    for method, method_runs in runs.items():
        row: dict = {"seeds": [r["seed"] for r in method_runs]}
        for key, _ in CAPTION_COLUMNS:
            values = [r["metrics"].get(key) for r in method_runs]
            if any(v is None for v in values):
                row[key] = None
                continue
            songs = np.mean([r["per_song"][key] for r in method_runs], axis=0)
            row[key] = {"mean": float(np.mean(values)), "std": _std(values),
                        "ci95": list(bootstrap_interval(songs)), "values": values}
        for key, _ in RETRIEVAL_COLUMNS:
            values = [r["metrics"].get("retrieval", {}).get(key) for r in method_runs]
            row[key] = None if any(v is None for v in values) else \
                {"mean": float(np.mean(values)), "std": _std(values), "values": values}
        for source, prefix in (("attribute_accuracy", "stated_"), ("attribute_invented", "invented_")):
            names = {a for r in method_runs for a in r["metrics"].get(source, {})}
            for name in sorted(names):
                values = [r["metrics"].get(source, {}).get(name) for r in method_runs]
                if all(v is not None for v in values):
                    row[prefix + name] = {"mean": float(np.mean(values)), "std": _std(values), "values": values}
        table[method] = row
    return table


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _cell(entry: dict | None, scale: float = 100.0, ci: bool = False) -> str:
    if entry is None:
        return "n/a"
    text = f"{entry['mean'] * scale:.2f}"
    if entry["std"] is not None:
        text += f" ± {entry['std'] * scale:.2f}"
    if ci and entry.get("ci95"):
        text += f" [{entry['ci95'][0] * scale:.2f}, {entry['ci95'][1] * scale:.2f}]"
    return text


def write_tables(experiment: Experiment, seeds: list[int]) -> dict:
    """Table 1 (captioning) and Table 2 (retrieval) as Markdown, CSV and LaTeX, plus results.json."""
    runs = collect(experiment, seeds)
    table = aggregate(runs)
    first = next((r["metrics"] for method_runs in runs.values() for r in method_runs), {})
    out = experiment.output_dir / "tables"
    out.mkdir(parents=True, exist_ok=True)
    t1_head = ["Method"] + [label for _, label in CAPTION_COLUMNS]
    t1 = [[m] + [_cell(row[k], ci=True) for k, _ in CAPTION_COLUMNS] for m, row in table.items()]
    t2_head = ["Method"] + [label for _, label in RETRIEVAL_COLUMNS]
    t2 = [[m] + [_cell(row[k]) for k, _ in RETRIEVAL_COLUMNS] for m, row in table.items()]
    if first.get("retrieval", {}).get("songs"):  # every method ranks the same songs
        from .metrics.retrieval import chance_retrieval

        chance = chance_retrieval(first["retrieval"]["songs"], RETRIEVAL_KS)
        t2.append(["chance (random ranking)"] + [_cell({"mean": chance[k], "std": None}) for k, _ in RETRIEVAL_COLUMNS])
    scope = (f"{experiment.name}, {experiment.evaluate.split} split, seeds {', '.join(map(str, seeds))}: "
             "mean ± std over seeds (x100)")
    tables = [("table1_captioning", t1_head, t1, scope + "; [95% bootstrap interval over songs]"),
              ("table2_retrieval", t2_head, t2, scope)]
    attributes = sorted({k for row in table.values() for k in row if k.startswith(("stated_", "invented_"))},
                        key=lambda k: (k.startswith("invented_"), k))
    if attributes:  # the corpus has attribute words (metrics/attributes.py)
        heads = [k.replace("stated_", "").replace("invented_", "") + (" invented (instrumentals)" if
                 k.startswith("invented_") else "") for k in attributes]
        rows = [[m] + [_cell(row.get(k), scale=100.0) for k in attributes] for m, row in table.items()]
        chance = first.get("attribute_chance", {})
        if chance:  # the same songs for every method: always stating the most common value
            rows.append(["chance (most common value)"] + [
                _cell({"mean": chance[k[len("stated_"):]], "std": None}) if k.startswith("stated_") and
                k[len("stated_"):] in chance else "" for k in attributes])
        tables.append(("table3_attributes", ["Method"] + heads, rows,
                       scope.replace("(x100)", "(% of songs)") + "; share of captions stating the song's true value"))
    for stem, head, rows, note in tables:
        (out / f"{stem}.md").write_text(_markdown(head, rows, note), encoding="utf-8")
        (out / f"{stem}.tex").write_text(_latex(head, rows, note), encoding="utf-8")
        with open(out / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([head, *rows])
    (out / "results.json").write_text(json.dumps({"experiment": experiment.name, "seeds": seeds,
                                                  "split": experiment.evaluate.split, "methods": table}, indent=2) + "\n")
    return {"tables_dir": str(out), "methods": table}


def _markdown(head: list[str], rows: list[list[str]], note: str) -> str:
    lines = [f"_{note}_", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _latex(head: list[str], rows: list[list[str]], note: str) -> str:
    def esc(text: str) -> str:
        return text.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")

    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(note) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- alpha ablation

def alpha_label(alpha: float) -> str:
    return f"alpha-{alpha:g}"


def sweep_experiment(experiment: Experiment, alphas: list[float], method: str = "alcap") -> tuple[Experiment, Experiment]:
    """(stages, sweep): the experiment's `method` once per alpha (alpha 0 is BART-fusion) in
    OUTPUT_DIR/sweep, and the experiment's unreported stages (e.g. a text model the methods
    start from), which stay in OUTPUT_DIR and are shared with the main runs."""
    if method not in experiment.methods:
        raise ValueError(f"unknown method {method!r}; this experiment has {', '.join(experiment.methods)}")
    if any(a < 0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct and non-negative, got {alphas}")
    parent = str(experiment.output_dir)
    base = {k: v.replace("{output_dir}", parent) if isinstance(v, str) else v
            for k, v in experiment.methods[method].items() if k != "report"}
    methods = {alpha_label(a): {**base, "model.alcap.alpha": float(a)} for a in sorted(alphas)}
    stages = {m: o for m, o in experiment.methods.items() if m not in experiment.reported_methods()}
    return (Experiment(experiment.name, experiment.output_dir, experiment.base, stages, experiment.evaluate),
            Experiment(f"{experiment.name} alpha sweep", experiment.output_dir / "sweep", experiment.base, methods,
                       experiment.evaluate))


def write_sweep(sweep: Experiment, alphas: list[float], table: dict) -> dict:
    """sweep.csv (one row per alpha) and two figures: captioning and retrieval scores against alpha."""
    out = sweep.output_dir
    rows = []
    for alpha in sorted(alphas):
        entry = table.get(alpha_label(alpha))
        if entry is None:
            continue
        row = {"alpha": alpha, "seeds": len(entry["seeds"])}
        for key, _ in CAPTION_COLUMNS + RETRIEVAL_COLUMNS:
            value = entry.get(key)
            row[key] = None if value is None else value["mean"]
            row[f"{key}_std"] = None if value is None else value["std"]
        rows.append(row)
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    captioning = _plot_against_alpha(rows, list(CAPTION_COLUMNS), "captioning score (x100)",
                                     out / "sweep_captioning.png", sweep.name)
    retrieval = _plot_against_alpha(rows, list(RETRIEVAL_COLUMNS), "retrieval score (x100)", out / "sweep_retrieval.png",
                                    sweep.name)
    return {"csv": str(out / "sweep.csv"), "figures": [captioning, retrieval], "rows": rows}


def _plot_against_alpha(rows: list[dict], series: list[tuple[str, str]], ylabel: str, path: Path, title: str) -> str:
    """Log-scaled alpha axis that still shows alpha = 0 (symlog, linear below the smallest positive alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [r["alpha"] for r in rows]
    positive = [a for a in alphas if a > 0]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label in series:
        points = [(r["alpha"], r[key] * 100, (r[f"{key}_std"] or 0) * 100) for r in rows if r[key] is not None]
        if points:
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=label)
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xticks(alphas)
    ax.set_xticklabels([f"{a:g}" for a in alphas])
    ax.set_xlabel("alpha (weight of the contrastive loss)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
