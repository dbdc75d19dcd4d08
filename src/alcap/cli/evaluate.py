"""`alcap evaluate | report | attention | alignment | probe | diagnose`: scores, figures and diagnostics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_decoding_speed_args


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="caption a split and score it (ROUGE-1/2/L, METEOR, retrieval P@k/R@k)",
                       description="Generate one caption per song of a split from the stored music embeddings, score it "
                                   "against every reference caption of the song (ROUGE recall as the paper reports it, "
                                   "and F1; METEOR), and measure text-to-music retrieval: one random sentence of a "
                                   "reference per song is the query, songs are ranked by the Sentence-BERT cosine "
                                   "similarity of their generated caption (precision@k, recall@k, k = 1, 5, 10). "
                                   "Writes predictions.jsonl, metrics.json and retrieval.npz (queries and embeddings).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model directory (best/ or last/ of a run)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--manifest", help="manifest (default: the one the model was trained on)")
    p.add_argument("--embeddings", help="embedding store (default: the one the model was trained on)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: CHECKPOINT/eval-SPLIT)")
    p.add_argument("--attributes", metavar="FILE",
                   help="words that state each attribute value in a caption, for attribute accuracy (default: "
                        "the run's data.attribute_words, else attributes.json beside the manifest, else not scored)")
    p.add_argument("--num-beams", type=int, metavar="N", help="beam size (default: the run's generation config, 4)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="longest caption in tokens (default: the run's)")
    add_decoding_speed_args(p)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N songs")
    p.add_argument("--no-retrieval", action="store_true", help="skip the text-to-music retrieval evaluation")
    p.add_argument("--retrieval-model", metavar="NAME_OR_DIR",
                   help="Sentence-BERT model for retrieval (default: the packaged all-MiniLM-L6-v2, offline)")
    p.add_argument("--query-seed", type=int, default=0, metavar="SEED",
                   help="seed that picks each song's query sentence (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_model

    metrics = evaluate_model(args.checkpoint, split=args.split, manifest=args.manifest, embeddings=args.embeddings,
                             out_dir=args.out, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                             limit=args.limit, progress=not args.quiet, retrieval=not args.no_retrieval,
                             retrieval_model=args.retrieval_model, query_seed=args.query_seed,
                             mixed_precision=args.mixed_precision, compile=args.compile, batch_size=args.batch_size,
                             attribute_words=args.attributes, quantize=args.quantize)
    keys = ("rouge1_recall", "rouge2_recall", "rougeL_recall", "rouge1_f1", "rouge2_f1", "rougeL_f1", "meteor")
    print(" ".join(f"{k} {metrics[k]:.4f}" if metrics.get(k) is not None else f"{k} n/a" for k in keys))
    if metrics.get("meteor") is None:
        print(f"METEOR unavailable: {metrics.get('meteor_unavailable')}", file=sys.stderr)
    if "attribute_accuracy" in metrics:
        print("attributes stated correctly: " + ", ".join(f"{k} {v:.0%}" for k, v in metrics["attribute_accuracy"].items())
              + f" (words: {metrics['attribute_words']})")
        for k, v in metrics.get("attribute_invented", {}).items():
            print(f"  {k} stated where there is none (instrumentals): {v:.0%}")
    else:
        print("attributes: not scored (no attributes.json beside the manifest; --attributes FILE names the words "
              "that state each value)")
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        print("text-to-music retrieval: " + " ".join(f"{k} {r[k]:.4f}" for k in r if "@" in k))
    print(f"{metrics['songs']} songs; predictions and metrics.json in {metrics['output_dir']}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="compare the evaluated runs of a folder on one Markdown page",
                       description="Read every run folder under RUNS_DIR that has best/eval-SPLIT/metrics.json and write "
                                   "report.md (metrics table, attribute accuracy on the demo corpus, sample captions), "
                                   "metrics.json and loss_curves.png into RUNS_DIR.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run folders")
    p.add_argument("--split", default="test", help="evaluated split to report (default: test)")
    p.add_argument("--samples", type=int, default=4, metavar="N", help="songs to show sample captions for (default: 4)")
    p.add_argument("--captions", metavar="FILE", help="JSONL from `alcap caption --jsonl` to include")
    p.add_argument("--title", default="alcap report", help="page title")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report import write_report

    path = write_report(args.runs_dir, split=args.split, samples=args.samples, captions_file=args.captions, title=args.title)
    print(f"report: {path} (with metrics.json and loss_curves.png beside it)")
    return 0


def add_attention(sub) -> None:
    p = sub.add_parser("attention", help="draw fusion cross-attention maps (lyric tokens x music steps) to PNG",
                       description="The paper's Figure 3: for N songs of a split, the fusion block's attention weights "
                                   "(lyric tokens on the y axis, music time steps on the x axis), one row per model "
                                   "(e.g. BART-fusion above ALCAP). Songs come from the manifest and embedding store "
                                   "the models were trained with.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="music model directories (one row each)")
    p.add_argument("--songs", type=int, default=3, metavar="N",
                   help="first N songs of the split that have lyrics (default: 3)")
    p.add_argument("--song-ids", nargs="+", metavar="ID", help="these songs instead of the first N")
    p.add_argument("--split", default="test", help="split the songs come from (default: test)")
    p.add_argument("--layer", type=int, default=-1, help="which fusion layer, as a list index (default: -1, the last)")
    p.add_argument("--max-tokens", type=int, default=40, metavar="N", help="lyric tokens shown (default: 40)")
    p.add_argument("--out", default="attention.png", metavar="PNG", help="figure file (default: attention.png)")
    p.set_defaults(func=cmd_attention)


def cmd_attention(args) -> int:
    from ..figures import attention_figure, inspect_model

    models = [inspect_model(m, split=args.split, songs=args.songs, song_ids=args.song_ids, layer=args.layer,
                            with_lyrics=True) for m in args.checkpoints]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    attention_figure(models, args.out, max_tokens=args.max_tokens)
    print(f"attention maps of {len(models)} model(s) x {len(models[0].song_ids)} song(s) "
          f"({', '.join(models[0].song_ids)}): {args.out}")
    return 0


def add_alignment(sub) -> None:
    p = sub.add_parser("alignment", help="music-lyrics similarity matrix of the alignment head and its retrieval accuracy",
                       description="What the contrastive module learned: for a split's songs, the cosine similarity of "
                                   "pooled music (z_m) and projected pooled lyrics (z_t) as a songs x songs heat map, "
                                   "matching pairs on the diagonal, and the music->lyrics retrieval it implies "
                                   "(recall@1/5/10, mean rank). Compare ALCAP with BART-fusion, whose head is untrained.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="music model directories")
    p.add_argument("--split", default="test", help="split (default: test)")
    p.add_argument("--songs", type=int, metavar="N", help="only the first N songs (default: all)")
    p.add_argument("--out", default="alignment", metavar="DIR",
                   help="output folder: alignment.png, MODEL.json, MODEL.npz (default: alignment)")
    p.set_defaults(func=cmd_alignment)


def cmd_alignment(args) -> int:
    from ..figures import alignment_diagnostics, alignment_figure, inspect_model, save_inspection

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for checkpoint in args.checkpoints:
        inspected = inspect_model(checkpoint, split=args.split, songs=args.songs)
        similarity, metrics = alignment_diagnostics(inspected)
        save_inspection(inspected, similarity, metrics, out)
        results.append((inspected, similarity, metrics))
        print(f"{inspected.name}: music->lyrics over {metrics['songs']} songs: R@1 {metrics['recall@1']:.3f} "
              f"(chance {metrics['chance_recall@1']:.3f}), R@5 {metrics['recall@5']:.3f}, "
              f"mean rank {metrics['mean_rank']:.1f}, diagonal - off-diagonal similarity "
              f"{metrics['diagonal_minus_off_diagonal']:+.3f}")
    figure = alignment_figure(results, out / "alignment.png")
    print(f"similarity heat maps: {figure}; numbers: {out}/*.json, arrays: {out}/*.npz")
    return 0


def add_probe(sub) -> None:
    p = sub.add_parser("probe", help="linear-probe accuracy of music embeddings for manifest columns (compare encoders)",
                       description="For each embedding store, average every song's h_m over time and cross-validate "
                                   "a logistic regression (scikit-learn, standardised features) that predicts each "
                                   "given manifest column: how much of each attribute the encoder's embeddings carry.")
    p.add_argument("stores", nargs="+", metavar="STORE", help="embedding stores to compare (made by alcap embed)")
    p.add_argument("--manifest", required=True, help="manifest whose columns hold the attributes")
    p.add_argument("--columns", nargs="+", required=True, metavar="COLUMN", help="columns to predict, e.g. tempo instrument")
    p.add_argument("--split", nargs="+", metavar="NAME",
                   help="only songs of these splits, e.g. val test to leave out songs a tagger was trained on "
                        "(default: every song in the store)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from ..probe import format_probe, linear_probe

    reports = [linear_probe(store, args.manifest, args.columns, splits=args.split, folds=args.folds, seed=args.seed)
               for store in args.stores]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(f"linear probe: {args.folds}-fold logistic regression on time-averaged h_m "
              f"({'splits ' + ', '.join(args.split) if args.split else 'all songs'}); accuracy mean ± std over folds")
        print("\n".join(format_probe(reports)))
    return 0


def add_diagnose(sub) -> None:
    diagnose = sub.add_parser("diagnose", help="diagnostics of trained models (swap: does each stated attribute "
                                               "follow the music or the lyrics?)")
    dsub = diagnose.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    p = dsub.add_parser("swap", help="caption songs with their own and with other songs' music; report what follows what",
                        description="Caption every song of a split twice: with its own music, and with its own "
                                    "lyrics but another song's music (a fixed random derangement). For each attribute "
                                    "the corpus has words for (attributes.json beside the manifest, or --attributes), "
                                    "print how often the own caption is right and, over pairs whose songs differ in "
                                    "it, how often the swapped caption follows the music and how often the lyrics; "
                                    "also, per fusion layer, the norm of the fusion update against the lyric states. "
                                    "Writes swap.json and swap.jsonl (both captions per song).")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories (best/ or last/ of runs)")
    p.add_argument("--split", default="test", help="songs to caption (default: test)")
    p.add_argument("--manifest", help="manifest (default: the one the model was trained on)")
    p.add_argument("--embeddings", help="embedding store (default: the one the model was trained on)")
    p.add_argument("--attributes", metavar="FILE",
                   help='words per attribute value, {"instrument": {"piano": ["piano"], ...}, ...} (default: '
                        "attributes.json beside the manifest)")
    p.add_argument("--seed", type=int, default=0, help="seed of the music swap (default: 0)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N songs")
    p.add_argument("--num-beams", type=int, metavar="N", help="beam size (default: the run's generation config)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: MODEL/diagnose-swap-SPLIT; with several "
                                                "models, DIR/METHOD/SEED)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_diagnose_swap)


def cmd_diagnose_swap(args) -> int:
    from ..diagnose import format_swap_report, swap_diagnostic

    reports = []
    for model in args.models:
        out = Path(args.out) / Path(model).parent.parent.name / Path(model).parent.name if args.out and len(args.models) > 1 \
            else args.out
        report = swap_diagnostic(model, split=args.split, manifest=args.manifest, embeddings=args.embeddings,
                                 attribute_words=args.attributes, seed=args.seed, limit=args.limit,
                                 num_beams=args.num_beams, out_dir=out, progress=not args.quiet)
        reports.append(report)
        if not args.json:
            print("\n".join(format_swap_report(report)))
            print(f"  captions and table: {report['output_dir']}")
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0
