"""`alcap report RUN_DIR`: one Markdown page comparing the runs in a folder.

RUN_DIR is a folder of runs (RUN/best/eval-<split>/) or an experiment directory
(METHOD/seed-S/best/eval-<split>/ plus tables/ from `alcap experiment`). Reads only files the
other commands wrote: logs, evaluations, the experiment tables, and the figures of
`alcap sweep` (sweep/), `alcap attention` (attention.png) and `alcap alignment` (alignment/)
when they are there; writes report.md, metrics.json and loss_curves.png next to them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .style import method_colour

METRIC_COLUMNS = (("rouge1_recall", "R-1"), ("rouge2_recall", "R-2"), ("rougeL_recall", "R-L"), ("meteor", "METEOR"),
                  ("rouge1_f1", "R-1 F1"), ("rouge2_f1", "R-2 F1"), ("rougeL_f1", "R-L F1"))


def model_label(retrieval: dict) -> str:
    """The retrieval model's name for a table (metrics written before labels existed: the path's last part)."""
    return retrieval.get("retrieval_model_label") or Path(retrieval["retrieval_model"]).name


def find_runs(runs_dir: Path, split: str) -> dict[str, Path]:
    """Runs that have an evaluation of `split`: RUN/ or METHOD/seed-S/, in the experiment's
    method order when its tables are there, else in name order."""
    def evaluated(p: Path) -> bool:
        return (p / "best" / f"eval-{split}" / "metrics.json").exists()

    results = runs_dir / "tables" / "results.json"
    order = list(json.loads(results.read_text())["methods"]) if results.exists() else []
    folders = sorted((p for p in runs_dir.iterdir() if p.is_dir() and p.name not in ("tables", "sweep")),
                     key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    runs: dict[str, Path] = {}
    for folder in folders:
        if evaluated(folder):
            runs[folder.name] = folder
        for seed_dir in sorted(folder.glob("seed-*")):
            if evaluated(seed_dir):
                runs[f"{folder.name} {seed_dir.name}"] = seed_dir
    return runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(runs: dict[str, Path], out: Path) -> None:
    """Training curves of one run per method (the first seed), so the figure stays readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    first_seed: dict[str, tuple[str, Path]] = {}
    for name, run in runs.items():
        first_seed.setdefault(name.split(" ")[0], (name, run))
    for name, run in first_seed.values():
        if not (run / "log.jsonl").is_file():  # a model copied without its run's log: no curve to draw
            continue
        log = read_jsonl(run / "log.jsonl")
        colour = method_colour(name)
        steps = [r for r in log if "train/caption_loss" in r]
        axes[0].plot([r["step"] for r in steps], [r["train/caption_loss"] for r in steps], label=f"{name} train", lw=1,
                     color=colour)
        evals = [r for r in log if "val/caption_loss" in r]
        axes[0].plot([r["step"] for r in evals], [r["val/caption_loss"] for r in evals], "o--", color=colour,
                     label=f"{name} val", ms=3)
        contrast = [r for r in steps if "train/contrast_loss" in r]
        if contrast:
            axes[1].plot([r["step"] for r in contrast], [r["train/contrast_loss"] for r in contrast], label=name, lw=1,
                         color=colour)
    axes[0].set(title="caption loss (cross-entropy)", xlabel="optimiser step", ylabel="loss")
    axes[1].set(title="contrastive loss (InfoNCE; alpha = 0 logs it untrained)", xlabel="optimiser step", ylabel="loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_report(runs_dir: str | Path, split: str = "test", samples: int = 4, captions_file: str | Path | None = None,
                 title: str = "alcap report") -> Path:
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir, split)
    if not runs:
        raise ValueError(f"{runs_dir}: no run folder with best/eval-{split}/metrics.json; run `alcap evaluate` first")
    metrics = {name: json.loads((run / "best" / f"eval-{split}" / "metrics.json").read_text()) for name, run in runs.items()}
    predictions = {name: read_jsonl(run / "best" / f"eval-{split}" / "predictions.jsonl") for name, run in runs.items()}
    plot_losses(runs, runs_dir / "loss_curves.png")
    (runs_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    first = next(iter(metrics.values()))
    lines = [f"# {title}", ""]
    tables = runs_dir / "tables"
    if (tables / "table1_captioning.md").exists():
        lines += ["## Table 1: captioning", "", (tables / "table1_captioning.md").read_text(encoding="utf-8"),
                  "## Table 2: text-to-music retrieval", "", (tables / "table2_retrieval.md").read_text(encoding="utf-8"),
                  "(CSV and LaTeX versions in `tables/`.)", ""]
        if (tables / "table3_attributes.md").exists():
            lines += ["## Table 3: attributes stated right", "", (tables / "table3_attributes.md").read_text(encoding="utf-8")]
        lines += ["## Every run", ""]
    lines += [ f"Split `{split}`: {first['songs']} songs, one caption per song, scored against all of "
             f"its references. Decoding: `{json.dumps(first['generation'])}`. ROUGE columns are recall (as the paper "
             "reports), F1 beside.", "", "| model | " + " | ".join(h for _, h in METRIC_COLUMNS) + " |",
             "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
    for name, m in metrics.items():
        cells = [f"{m[k]:.4f}" if m.get(k) is not None else "n/a" for k, _ in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if all("retrieval" in m for m in metrics.values()):
        keys = [k for k in first["retrieval"] if "@" in k]
        lines += ["", f"Text-to-music retrieval over the split (model: `{model_label(first['retrieval'])}`, "
                  f"query seed {first['retrieval']['query_seed']}):", "",
                  "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, m in metrics.items():
            lines.append(f"| {name} | " + " | ".join(f"{m['retrieval'][k]:.4f}" for k in keys) + " |")
        if first["retrieval"].get("songs"):
            from .metrics.retrieval import chance_retrieval

            chance = chance_retrieval(first["retrieval"]["songs"], sorted({int(k.split("@")[1]) for k in keys}))
            lines.append("| chance (random ranking) | " + " | ".join(f"{chance[k]:.4f}" for k in keys) + " |")
    if any(m.get("meteor") is None for m in metrics.values()):
        lines += ["", f"METEOR unavailable: {next(m['meteor_unavailable'] for m in metrics.values() if m.get('meteor') is None)}"]
    if all("attribute_accuracy" in m for m in metrics.values()):
        attrs = list(first["attribute_accuracy"])
        invented = sorted({a for m in metrics.values() for a in m.get("attribute_invented", {})})
        heads = attrs + [f"{a} invented for instrumentals" for a in invented]
        lines += ["", "How often the caption states the song's true attribute (share of songs; words from "
                  f"`{first.get('attribute_words', '?')}`):", "",
                  "| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for name, m in metrics.items():
            cells = [f"{m['attribute_accuracy'].get(a, float('nan')):.0%}" for a in attrs]
            cells += [f"{m.get('attribute_invented', {}).get(a, float('nan')):.0%}" for a in invented]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        chance = first.get("attribute_chance")
        if chance:  # every model captions the same songs
            lines.append("| chance (most common value) | " + " | ".join(
                [f"{chance[a]:.0%}" if a in chance else "" for a in attrs] + [""] * len(invented)) + " |")
    else:
        lines += ["", "Attributes not scored: no attributes.json beside the manifest (see README, 'Attribute words')."]
    lines += ["", "![loss curves](loss_curves.png)", ""]
    lines += _figures(runs_dir)
    lines += ["## Sample captions", ""]
    first_of_method: dict[str, str] = {}
    for name in predictions:  # samples from the first seed of each method
        first_of_method.setdefault(name.split(" ")[0], name)
    names = list(first_of_method.values())
    for i in range(min(samples, len(predictions[names[0]]))):
        row = predictions[names[0]][i]
        heard = "" if row.get("lyrics", "x").strip() else " *(an instrumental: captioned without lyrics)*"
        lines += [f"**{row['song_id']}**{heard} — reference: {row['references'][0]}", ""]
        lines += [f"- {name}: {predictions[name][i]['prediction']}" for name in names] + [""]
    if captions_file and Path(captions_file).exists():
        records = read_jsonl(Path(captions_file))
        without = sum(1 for r in records if "caption" in r and not r.get("lyrics", "").strip())
        lines += ["## Held-out songs captioned from their audio files (`alcap caption`)", "",
                  f"{len(records)} songs; {without} of them captioned without lyrics (marked)." if without else
                  f"{len(records)} songs, each captioned from its audio and its lyrics.", ""]
        lines += [f"- `{Path(r['file']).name}`"
                  + (" *(no lyrics: from the music alone)*" if "caption" in r and not r.get("lyrics", "").strip() else "")
                  + ": " + (r["caption"] if "caption" in r else f"(failed: {r['error']})") for r in records]
    report = runs_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _figures(runs_dir: Path) -> list[str]:
    """Sections for the figures other commands left in the folder."""
    lines = []
    sweep = runs_dir / "sweep"
    if (sweep / "sweep.csv").exists():
        lines += ["## Alpha ablation (`alcap sweep`)", "", "![captioning vs alpha](sweep/sweep_captioning.png)", "",
                  "![retrieval vs alpha](sweep/sweep_retrieval.png)", "", "Numbers: `sweep/sweep.csv`.", ""]
    swaps = sorted((runs_dir / "swap").glob("**/swap.json"))
    if swaps:
        from .diagnose import format_swap_report

        lines += ["## Music or lyrics? (`alcap diagnose swap`)", "", "Each song captioned with its own lyrics and "
                  "another song's music: over pairs that differ in an attribute, how often the caption follows each.",
                  "", "```"]
        for path in swaps:
            lines += format_swap_report(json.loads(path.read_text())) + [""]
        lines += ["```", ""]
    if (runs_dir / "attention.png").exists():
        lines += ["## Fusion attention (`alcap attention`)", "", "![fusion attention](attention.png)", ""]
    alignment = runs_dir / "alignment"
    if (alignment / "alignment.png").exists():
        lines += ["## Alignment head (`alcap alignment`)", "", "Music->lyrics retrieval from the alignment head's "
                  "similarity matrix (chance R@1 = 1 / songs):", "", "| model | R@1 | R@5 | mean rank | chance R@1 |",
                  "|---|---|---|---|---|"]
        for path in sorted(alignment.glob("*.json")):
            m = json.loads(path.read_text())
            lines.append(f"| {m['model']} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['mean_rank']:.1f} | "
                         f"{m['chance_recall@1']:.3f} |")
        lines += ["", "![alignment similarity](alignment/alignment.png)", ""]
    return lines
