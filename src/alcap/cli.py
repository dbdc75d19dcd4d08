"""The `alcap` command line: parse, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

EPILOG = "Documentation: README.md. Every command prints its own --help."


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _jobs_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="train up to N runs at a time (other methods, other seeds), each in its own process "
                             "with cores/N torch threads (default 1). Small models use extra threads poorly, so runs "
                             "side by side finish sooner: on 2 cores the demo's three fine-tunes took 240 s with "
                             "--jobs 3, 294 s one at a time")


def _excerpt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("excerpt (which part of each song the music encoder hears)")
    group.add_argument("--excerpt-seconds", type=float, default=15.0, metavar="S",
                       help="length of the excerpt in seconds; 0 takes the whole file (default: 15, as ALCAP)")
    group.add_argument("--excerpt-position", choices=("middle", "start", "offset"), default="middle",
                       help="where the excerpt starts: the middle of the song, its start, or --excerpt-offset (default: middle)")
    group.add_argument("--excerpt-offset", type=float, default=0.0, metavar="S",
                       help="start of the excerpt in seconds, with --excerpt-position offset (default: 0)")


def _excerpt(args):
    from .audio.decode import Excerpt

    return Excerpt(seconds=args.excerpt_seconds or None, position=args.excerpt_position, offset=args.excerpt_offset)


def _device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device for the encoder: auto (CUDA when available), cpu, cuda, cuda:1, ... (default: auto)")


def _decoding_speed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="songs decoded together; 64 pays on a GPU (default: the run's generation.batch_size, 16)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"),
                        help="autocast decoding on a GPU (ignored on the CPU) (default: the run's "
                             "generation.mixed_precision, no)")


def _extractor(args):
    """The music encoder that --encoder, --checkpoint and --random-init name."""
    from .audio.extractor import CNNSAExtractor, MusicnnExtractor

    if args.encoder != "cnnsa":
        if args.checkpoint or args.random_init is not None:
            raise ValueError(f"--encoder {args.encoder} uses the pretrained weights of the musicnn package; "
                             "--checkpoint and --random-init are for --encoder cnnsa")
        return MusicnnExtractor.from_package(args.encoder, device=args.device)
    if args.checkpoint:
        return CNNSAExtractor.from_checkpoint(args.checkpoint, device=args.device)
    if args.random_init is not None:
        return CNNSAExtractor.random_init(args.random_init, device=args.device)
    raise ValueError("--encoder cnnsa needs its weights: --checkpoint PATH (the MSD checkpoint, or a tagger made "
                     "by `alcap train-tagger`) or --random-init SEED; or use --encoder musicnn-msd, pretrained offline")


def _encoder_args(parser: argparse.ArgumentParser, random_init: bool) -> None:
    group = parser.add_argument_group("music encoder")
    group.add_argument("--encoder", choices=("musicnn-msd", "musicnn-mtt", "cnnsa"), default="cnnsa",
                       help="musicnn-msd / musicnn-mtt: musicnn pretrained on the Million Song Dataset / MagnaTagATune "
                            "(weights from the musicnn PyPI package, offline; 753 features at 3.68 steps/s); cnnsa: "
                            "ALCAP's CNNSA with --checkpoint%s (256 features) (default: cnnsa)"
                            % (" or --random-init" if random_init else ""))
    group.add_argument("--checkpoint", metavar="PATH",
                       help="CNNSA checkpoint file or directory (with --encoder cnnsa): best_model.pth of "
                            "minzwon/sota-music-tagging-models (models/msd/attention/), or a tagger made by "
                            "`alcap train-tagger` (its tags.txt names the tags)")
    if random_init:
        group.add_argument("--random-init", type=int, metavar="SEED",
                           help="a randomly initialised CNNSA with this seed (with --encoder cnnsa; tests and "
                                "baselines only: its features barely tell songs apart)")


# ----------------------------------------------------------------------------- tag


def cmd_tag(args) -> int:
    import numpy as np
    import torch

    from .audio.decode import AudioError, load_audio, split_windows
    from .audio.tags import tag_names, top_tags

    args.random_init = None
    extractor = _extractor(args)
    if args.encoder == "cnnsa":
        names = tag_names(args.checkpoint, extractor.model.dense.out_features)
    else:
        names = extractor.tag_names()
    excerpt = _excerpt(args)
    if args.full_track:
        from .audio.decode import Excerpt

        excerpt = Excerpt(seconds=None)
    window = int(round((args.excerpt_seconds or 15.0) * extractor.sample_rate))
    failed = 0
    for path in args.audio:
        try:
            clip = load_audio(path, extractor.sample_rate, excerpt)
        except AudioError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": str(path), "error": exc.reason}), flush=True)
            continue
        waves = split_windows(clip.samples, window) if args.full_track else clip.samples[None]
        probs = extractor.tag(torch.from_numpy(waves)).mean(dim=0).numpy()  # average over windows
        tags = top_tags(np.asarray(probs), args.top, names)
        if args.json:
            print(json.dumps({"file": str(path), "tags": tags}, ensure_ascii=False), flush=True)
        else:
            print(path)
            for name, p in tags.items():
                print(f"  {name:<20} {p:.3f}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- train-tagger


def cmd_train_tagger(args) -> int:
    import numpy as np
    import torch

    from .audio.decode import AudioError, load_audio
    from .audio.tagger import TaggerConfig, TagSchema, save_tagger, train_tagger
    from .data.manifest import read_manifest

    manifest = read_manifest(args.manifest)
    songs: dict[str, dict] = {}
    for row in manifest.rows:
        if row.split in (args.split, args.val_split) and row.song_id not in songs:
            missing = [c for c in args.tags if str(row.extra.get(c, "")).strip() == ""]
            if missing:
                raise SystemExit(f"error: {args.manifest} line {row.line}: song {row.song_id} has no value for "
                                 f"{', '.join(missing)}; every song needs all --tags columns")
            songs[row.song_id] = {"split": row.split, "audio": row.audio, **{c: str(row.extra[c]) for c in args.tags}}
    train_ids = [s for s, v in songs.items() if v["split"] == args.split]
    if not train_ids:
        raise SystemExit(f"error: {args.manifest}: no songs in split {args.split!r}")
    schema = TagSchema.from_values(args.tags, {c: [songs[s][c] for s in train_ids] for c in args.tags})
    excerpt = _excerpt(args)
    if excerpt.seconds is None:
        raise SystemExit("error: the tagger trains on fixed-length excerpts; give --excerpt-seconds > 0")

    def load(split: str) -> tuple[torch.Tensor | None, np.ndarray | None]:
        ids = [s for s, v in songs.items() if v["split"] == split]
        waves, targets = [], []
        for song_id in ids:
            try:
                waves.append(load_audio(songs[song_id]["audio"], 16000, excerpt).samples)
            except AudioError as exc:
                print(f"skipped song {song_id}: {exc}", file=sys.stderr)
                continue
            try:
                targets.append(schema.encode(songs[song_id]))
            except ValueError as exc:
                raise SystemExit(f"error: song {song_id} of split {split!r}: {exc} (no training song has "
                                 "that value)") from None
        return (torch.from_numpy(np.stack(waves)), np.stack(targets)) if waves else (None, None)

    train_waves, train_targets = load(args.split)
    if train_waves is None:
        raise SystemExit(f"error: no song of split {args.split!r} could be decoded")
    val_waves, val_targets = load(args.val_split)
    config = TaggerConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, init_seed=args.init_seed,
                          seed=args.seed)
    print(f"training a CNNSA tagger on {len(train_waves)} songs ({0 if val_waves is None else len(val_waves)} for "
          "validation), "
          f"{len(schema.names)} tags: {', '.join(schema.names)}", file=sys.stderr)
    model, report = train_tagger(train_waves, train_targets, schema, val_waves, val_targets, config,
                                 progress=not args.quiet)
    path = save_tagger(model, report, args.out)
    last = report.history[report.best_epoch - 1]
    summary = {"checkpoint": str(path), "tags": report.tags, "best_epoch": report.best_epoch,
               "val_accuracy": last.get("val_accuracy"), "seconds": report.seconds,
               "weights_sha256": report.weights_sha256}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {path} (weights sha256 {report.weights_sha256[:12]}), epoch {report.best_epoch} of {args.epochs}")
        if last.get("val_accuracy"):
            print("validation accuracy: " + ", ".join(f"{k} {v:.0%}" for k, v in last["val_accuracy"].items()))
    return 0


# ----------------------------------------------------------------------------- embed


def cmd_embed(args) -> int:
    from .data.embed import embed_songs
    from .data.manifest import read_manifest
    from .data.store import EmbeddingStore

    manifest = read_manifest(args.manifest)
    rows = [r for r in manifest.rows if not args.split or r.split in args.split]
    songs: dict[str, str] = {}
    for row in rows:
        songs.setdefault(row.song_id, row.audio)
    if args.shard:
        from .data.embed import shard_of

        shard, num_shards = _parse_shard(args.shard)
        songs = {sid: songs[sid] for sid in shard_of(songs, shard, num_shards)}
    if manifest.issues:
        print(f"note: {len(manifest.issues)} manifest rows could not be read; `alcap data validate {args.manifest}` lists them",
              file=sys.stderr)
    conflicts = {sid: rows for sid, rows in manifest.conflicting_audio().items() if sid in songs}
    for song_id, rows in list(conflicts.items())[:5]:
        others = ", ".join(f"{r.audio} (line {r.line})" for r in rows[1:])
        print(f"warning: song {song_id} has rows with different audio files; embedding {rows[0].audio} (line "
              f"{rows[0].line}), not {others}", file=sys.stderr)
    if len(conflicts) > 5:
        print(f"warning: ... {len(conflicts) - 5} more songs with conflicting audio; `alcap data validate "
              f"{args.manifest}` lists them all", file=sys.stderr)
    extractor = _extractor(args)
    print(f"embedding {len(songs)} songs from {args.manifest} with {extractor.name} "
          f"({extractor.describe()['weights_source']}, sha256 {extractor.weights_sha256[:12]}) on {extractor.device}",
          file=sys.stderr)
    try:
        report = embed_songs(songs, extractor, args.out, excerpt=_excerpt(args), batch_size=args.batch_size,
                             workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        store = EmbeddingStore.open(args.out)
        print(f"\ninterrupted: {len(store)} songs are safely in {args.out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        store = EmbeddingStore.open(args.out)
        print(f"alcap embed: error: no space left on device while writing {exc.filename or args.out}. "
              f"{len(store)} songs are safely in {args.out}; free some space and run the same command again to "
              "resume", file=sys.stderr)
        return 2
    store = EmbeddingStore.open(args.out)
    stats = store.stats()
    for failure in report.failures:
        print(f"failed: song {failure['id']}: {failure['audio']}: {failure['reason']}", file=sys.stderr)
    summary = {**report.to_dict(), "store_songs": stats["songs"], "bytes_per_song": round(stats["bytes_per_song"], 1),
               "sequence_length": [stats["min_length"], stats["max_length"]]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"embedded {report.embedded} songs ({report.already_done} already in the store, {len(report.failures)} failed) "
              f"in {report.seconds:.1f} s: {report.songs_per_second:.2f} songs/s")
        print(f"store {args.out}: {stats['songs']} songs, {stats['bytes_per_song'] / 1024:.1f} KiB per song "
              f"(L_m {stats['min_length']}..{stats['max_length']} x {stats['dim']} float16)")
    return 0 if len(store) else 1


def cmd_library_add(args) -> int:
    from .library.build import add_songs

    report = add_songs(args.library, args.model, args.sources, sentence_model=args.sentence_model, device=args.device,
                       batch_size=args.batch_size or 16, workers=args.workers, limit=args.limit,
                       shard=_parse_shard(args.shard) if args.shard else None, progress=not args.quiet)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"library {report.library}: {report.added} songs added, {report.skipped} already there, "
              f"{report.failed} failed, in {report.seconds:.1f} s"
              + (f"; `alcap library failures {report.library}` lists why" if report.failed else ""))
    return 0 if report.failed == 0 else 1


def cmd_library_search(args) -> int:
    from .library import Library

    with Library.open(args.library) as library:
        hits = library.search(args.query, k=args.top, mode=args.mode, where=args.where, like=args.like)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no songs match")
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank:>3}. {hit.score:.4f}  {hit.id[:16]}  {hit.path}\n     {hit.caption}")
    return 0


def cmd_library_info(args) -> int:
    from .library import Library

    with Library.open(args.library) as library:
        info = library.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    model = info["identity"]["captioning_model"]
    print(f"library {info['library']}: {info['songs']} songs, {info['failures']} failures, "
          f"{info['size_bytes'] / 2**20:.1f} MiB")
    print(f"  captioning model: weights sha256 {model['weights_sha256'][:16]}, music encoder "
          f"{(model['music_encoder_sha256'] or 'none (lyrics only)')[:16]}")
    print(f"  sentence model: {info['identity']['sentence_model']['name']} ({info['dim']}-d); search: exact over "
          f"{info['vector_rows']} vector rows ({info['unused_rows']} unused, of removed songs)")
    return 0


def cmd_library_failures(args) -> int:
    from .library import Library

    with Library.open(args.library) as library:
        failures = library.failures()
    if args.json:
        print(json.dumps(failures, indent=2, ensure_ascii=False))
    else:
        for f in failures:
            print(f"{f['path']}: {f['reason']}")
        print(f"{len(failures)} failed songs; the next `alcap library add` tries them again")
    return 0


def cmd_library_export(args) -> int:
    from .library import Library

    with Library.open(args.library) as library:
        count = library.export(args.out)
    print(f"{count} songs written to {args.out}")
    return 0


def cmd_library_remove(args) -> int:
    from .library import Library

    with Library.open(args.library, write=True) as library:
        removed = library.remove(args.songs)
    print(f"removed {len(removed)} songs" + (f": {', '.join(removed)}" if removed else ""))
    return 0 if removed else 1


def cmd_library_evaluate(args) -> int:
    from .data.manifest import read_manifest
    from .evaluate import songs_with_references
    from .library import Library
    from .library.store import evaluate_search

    pool = songs_with_references(read_manifest(args.manifest).split(args.split))  # as `alcap evaluate` has it
    if not pool:
        raise ValueError(f"{args.manifest}: no {args.split} songs with reference captions")
    with Library.open(args.library) as library:
        result = evaluate_search(library, [s["song_id"] for s in pool], [s["references"] for s in pool],
                                 seed=args.query_seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"text-to-music retrieval over {result['songs']} {args.split} songs (query seed {args.query_seed})")
    print("| mode | R@1 | R@5 | R@10 | MRR | mean rank |\n| --- | --- | --- | --- | --- | --- |")
    for mode in ("dense", "lexical", "hybrid"):
        m = result[mode]
        print(f"| {mode} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} "
              f"| {m['mean_rank']:.1f} |")
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        shard, num_shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None
    return shard, num_shards


def cmd_store_merge(args) -> int:
    from .data.store import merge_stores

    summary = merge_stores(args.out, args.sources)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"merged {len(args.sources)} stores into {args.out}: {summary['songs']} songs "
              f"({summary['copied']} copied, {summary['already_in_output']} already there, "
              f"{summary['duplicates']} duplicates skipped, {summary['failures']} failures carried over)")
    return 0


# ----------------------------------------------------------------------------- data


def cmd_validate(args) -> int:
    from .data.manifest import read_manifest
    from .data.validate import validate_manifest

    report = validate_manifest(read_manifest(args.manifest), check_audio=not args.no_audio, decode=args.decode,
                               excerpt=_excerpt(args), workers=args.workers, progress=not args.quiet)
    print(report.format_text(max_issues=args.max_issues))
    if args.json:
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
            print(f"full report: {args.json}")
    return 0 if report.ok else 1


def cmd_make_demo(args) -> int:
    from .data.demo import make_demo_corpus

    summary = make_demo_corpus(args.out, n_songs=args.songs, seed=args.seed, captions_per_song=args.captions_per_song,
                               min_seconds=args.min_seconds, max_seconds=args.max_seconds, workers=args.workers,
                               progress=not args.quiet, alignment=args.alignment,
                               instrumental_share=args.instrumental_share)
    if summary.get("reused"):
        print(f"reusing the corpus already in {args.out} (same parameters); delete it to regenerate")
    print(f"demo corpus: {summary['songs']} songs ({summary['seconds_of_audio'] / 60:.1f} min of audio), "
          f"{summary['rows']} captions, splits {summary['splits']}, formats {summary['formats']}, "
          f"made in {summary['generation_seconds']} s")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in summary["preferred_character_share"].items() if v is not None)
    print(f"music-lyrics alignment {summary['alignment']} (songs with their theme's preferred {shares}); "
          f"{summary['attributes']['theme'].get('instrumental', 0)} instrumentals")
    print(f"manifest: {summary['manifest']}")
    return 0


def _split_files(values: list[str] | None, flag: str) -> dict[str, str] | None:
    """["train=a.pkl", "test=b.pkl"] -> {"train": "a.pkl", "test": "b.pkl"}."""
    if not values:
        return None
    out = {}
    for value in values:
        split, sep, file = value.partition("=")
        if not sep or not file:
            raise ValueError(f"{flag} {value!r}: write SPLIT=FILE, e.g. {flag} train=si_train.pkl")
        out[split] = file
    return out


def _print_import(counts: dict, out: str) -> None:
    splits = ", ".join(f"{s} {counts[s]}" for s in ("train", "val", "test") if counts.get(s))
    print(f"wrote {out}: {counts['rows']} rows ({splits}), {counts['songs']} songs")
    if counts["empty_captions_dropped"]:
        print(f"left out {counts['empty_captions_dropped']} rows with an empty interpretation")
    if counts["missing_audio"]:
        print(f"warning: {counts['missing_audio']} songs have no audio file where expected; "
              f"`alcap data validate {out}` lists them", file=sys.stderr)
    skipped = counts.get("skipped_rows", [])
    for row in skipped[:10]:
        print(f"skipped {row['file']}:{row['line']}: {row['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more skipped rows", file=sys.stderr)


def cmd_import_si(args) -> int:
    from .data.importers import import_si

    counts = import_si(args.out, args.audio_dir, csv_dir=args.csv_dir, pickles=_split_files(args.pickle, "--pickle"),
                       jsons=_split_files(args.json, "--json"), variant=args.variant, id_field=args.id_field,
                       lyrics_field=args.lyrics_field, caption_field=args.caption_field,
                       comments_field=args.comments_field, audio_ext=args.audio_ext)
    print(f"Song Interpretation, variant {counts['variant']}")
    _print_import(counts, args.out)
    return 0


def cmd_import_table(args) -> int:
    from .data.importers import import_table

    counts = import_table(args.table, args.out, audio_dir=args.audio_dir, id_field=args.id_field,
                          lyrics_field=args.lyrics_field, caption_field=args.caption_field,
                          audio_field=args.audio_field or None, audio_ext=args.audio_ext, ratios=tuple(args.ratios),
                          seed=args.seed)
    _print_import(counts, args.out)
    return 0


def cmd_store_info(args) -> int:
    from .data.store import EmbeddingStore

    store = EmbeddingStore.open(args.store)
    info = {"store": str(args.store), **store.stats(), "meta": store.meta}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = store.meta
    extractor = meta["extractor"]
    source = meta.get("info", {}).get("extractor", {}).get("weights_source", "?")
    print(f"store: {args.store}")
    print(f"  songs: {info['songs']} ({info['failures']} failed, {info['padded_songs']} shorter than the excerpt)")
    print(f"  embeddings: L_m {info['min_length']}..{info['max_length']} x {info['dim']} float16, "
          f"{info['bytes_per_song'] / 1024:.1f} KiB per song, {info['data_bytes'] / 2**20:.1f} MiB in all")
    print(f"  extractor: {extractor['name']} ({source}), weights sha256 {extractor['weights_sha256']}")
    excerpt = meta["excerpt"]
    print(f"  audio: {meta['sample_rate']} Hz mono, excerpt {excerpt['seconds'] or 'whole file'} s ({excerpt['position']})")
    return 0


# ----------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from .config import load_config
    from .train.loop import train

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


def cmd_experiment(args) -> int:
    from .experiment import load_experiment, run_all, run_experiment, write_tables

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


def cmd_sweep(args) -> int:
    from .experiment import load_experiment, run_all, sweep_experiment, write_sweep, write_tables

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


def cmd_attention(args) -> int:
    from .figures import attention_figure, inspect_model

    models = [inspect_model(m, split=args.split, songs=args.songs, song_ids=args.song_ids, layer=args.layer)
              for m in args.checkpoints]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    attention_figure(models, args.out, max_tokens=args.max_tokens)
    print(f"attention maps of {len(models)} model(s) x {len(models[0].song_ids)} song(s) "
          f"({', '.join(models[0].song_ids)}): {args.out}")
    return 0


def cmd_probe(args) -> int:
    from .probe import format_probe, linear_probe

    reports = [linear_probe(store, args.manifest, args.columns, splits=args.split, folds=args.folds, seed=args.seed)
               for store in args.stores]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(f"linear probe: {args.folds}-fold logistic regression on time-averaged h_m "
              f"({'splits ' + ', '.join(args.split) if args.split else 'all songs'}); accuracy mean ± std over folds")
        print("\n".join(format_probe(reports)))
    return 0


def cmd_diagnose_swap(args) -> int:
    from .diagnose import format_swap_report, swap_diagnostic

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


def cmd_alignment(args) -> int:
    from .figures import alignment_diagnostics, alignment_figure, inspect_model, save_inspection

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


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_model

    metrics = evaluate_model(args.checkpoint, split=args.split, manifest=args.manifest, embeddings=args.embeddings,
                             out_dir=args.out, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                             limit=args.limit, progress=not args.quiet, retrieval=not args.no_retrieval,
                             retrieval_model=args.retrieval_model, query_seed=args.query_seed,
                             mixed_precision=args.mixed_precision, batch_size=args.batch_size,
                             attribute_words=args.attributes)
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


def cmd_caption(args) -> int:
    from .data.lyrics import sidecar_lyrics
    from .inference import Captioner

    _check_writable(args.jsonl, "--jsonl")  # refused before any work starts
    given = _given_lyrics(args.lyrics)
    captioner = Captioner.from_pretrained(args.model, device=args.device)
    captioner.generation = captioner.generation.with_overrides(mixed_precision=args.mixed_precision,
                                                               batch_size=args.batch_size)
    if not captioner.uses_music:
        print(f"note: {args.model} is a lyrics-only model: its captions do not hear the audio", file=sys.stderr)
    lyrics, failed = {}, {}
    for audio in args.audio:
        try:
            lyrics[audio] = given if given is not None else sidecar_lyrics(Path(audio))
        except ValueError as exc:
            failed[audio] = str(exc)
    good = [a for a in args.audio if a in lyrics]
    results = {r.source: r for r in captioner.caption_batch(good, [lyrics[a] for a in good], errors="skip")}
    # The output file is replaced only now, so a run that fails to start keeps an earlier one.
    out = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    captioned = 0
    for audio in args.audio:
        result = results.get(str(audio))
        error = failed.get(audio) or (result.error if result else None)
        if error:
            print(f"error: {audio}: {error}", file=sys.stderr)
            record = {"file": str(audio), "error": error}
        else:
            captioned += 1
            record = {"file": str(audio), "lyrics": result.lyrics, "caption": result.caption}
            if not out:
                print(f"{audio}: {result.caption}")
        if out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    if out:
        out.close()
        print(f"{captioned} captions written to {args.jsonl}" +
              (f"; {len(args.audio) - captioned} files failed" if captioned < len(args.audio) else ""))
    return 0 if captioned == len(args.audio) else 1


def _check_writable(path: str | None, flag: str) -> None:
    """Fail now, before hours of work, if `path` cannot be written; an existing file is left as it is."""
    if not path:
        return
    existed = Path(path).exists()
    try:
        open(path, "a", encoding="utf-8").close()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot be written ({exc.strerror})") from None
    if not existed:
        Path(path).unlink()


def _given_lyrics(given: str | None) -> str | None:
    """--lyrics as a file or as the text itself."""
    from .data.lyrics import read_text_file

    if given is None:
        return None
    path = Path(given)
    return read_text_file(path, "--lyrics file") if path.is_file() else given


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.runs_dir, split=args.split, samples=args.samples, captions_file=args.captions, title=args.title)
    print(f"report: {path} (with metrics.json and loss_curves.png beside it)")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="alcap", description="Music captioning from audio and lyrics (ALCAP).", epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"alcap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("tag", help="top tags of audio files from the music encoder's tagging head (checks that its "
                                   "weights loaded)",
                       description="Print the most probable of the music encoder's tags for each audio file: the 50 "
                                   "MSD tags of musicnn-msd or of the CNNSA checkpoint, the 50 MagnaTagATune tags of "
                                   "musicnn-mtt, or a trained tagger's own. musicnn averages its taggram over the "
                                   "excerpt's 3 s patches, as its own top_tags does. A quick check that real weights "
                                   "loaded: rock songs should say rock.")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (WAV, FLAC, OGG, MP3; any rate and channel count)")
    _encoder_args(p, random_init=False)
    p.add_argument("--top", type=int, default=5, metavar="K", help="number of tags to print per file; 50 prints all (default: 5)")
    p.add_argument("--json", action="store_true", help='one JSON object per line: {"file": ..., "tags": {"rock": 0.91, ...}}')
    p.add_argument("--full-track", action="store_true",
                   help="average the tags over consecutive excerpt-length windows of the whole file instead of one excerpt")
    _excerpt_args(p)
    _device_arg(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("train-tagger", help="train a CNNSA music tagger on tag columns of a manifest (offline stand-in "
                                            "for the MSD checkpoint)",
                       description="Train CNNSA's self-attention half (2 layers, pooler, tag head) to predict tag "
                                   "columns of a manifest, on top of random convolutions whose BatchNorm statistics "
                                   "are set from the training audio, and write a checkpoint in the public layout "
                                   "(best_model.pth, tags.txt, tagger.json). Use it with --checkpoint where the MSD "
                                   "weights cannot be had: a trained tagger's features tell songs apart by what the "
                                   "tags name, a random one's barely do. A yes/no column becomes one tag; any other "
                                   "column one tag per value.")
    p.add_argument("manifest", metavar="MANIFEST", help="manifest whose rows carry the tag columns (.jsonl, .csv or .parquet)")
    p.add_argument("--tags", nargs="+", required=True, metavar="COLUMN",
                   help="manifest columns to learn, e.g. instrument tempo mode energy drums")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for best_model.pth, tags.txt and tagger.json")
    p.add_argument("--split", default="train", help="songs to train on (default: train)")
    p.add_argument("--val-split", default="val",
                   help="songs to validate on; the epoch with the lowest validation loss is kept (default: val)")
    p.add_argument("--epochs", type=int, default=30, metavar="N", help="training epochs (default: 30)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="songs per step (default: 16)")
    p.add_argument("--init-seed", type=int, default=0, metavar="SEED",
                   help="seed of the random CNNSA the tagger starts from (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order and time crops (default: 0)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _excerpt_args(p)
    p.set_defaults(func=cmd_train_tagger)

    p = sub.add_parser("embed", help="precompute frozen music embeddings for every song of a manifest",
                       description="Decode every distinct song of a manifest, run the frozen music encoder and write "
                                   "its sequence output (h_m: musicnn's mid end, L_m x 753, or CNNSA's last layer, "
                                   "L_m x 256) into an embedding store. Songs already in "
                                   "the store are skipped, so an interrupted run resumes; files that cannot be decoded "
                                   "are reported and recorded in failures.jsonl, and the others are still embedded.")
    p.add_argument("manifest", metavar="MANIFEST", help="manifest file (.jsonl, .csv or .parquet; see README)")
    p.add_argument("--out", required=True, metavar="DIR", help="embedding store directory (created, or resumed if it exists)")
    _encoder_args(p, random_init=True)
    p.add_argument("--split", nargs="+", metavar="NAME", help="embed only songs of these splits (default: all rows)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="songs per encoder call (default: 16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding worker processes; 0 decodes in the main process (default: 2)")
    p.add_argument("--shard", metavar="K/N",
                   help="embed only shard K (0-based) of N: every N-th song in sorted id order. Run the N shards on "
                        "different machines or processes, each into its own --out, then join them with "
                        "`alcap store merge`")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _excerpt_args(p)
    _device_arg(p)
    p.set_defaults(func=cmd_embed)

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
    _jobs_arg(p)
    p.add_argument("--tables-only", action="store_true", help="only (re)write the tables from finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)

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
    _jobs_arg(p)
    p.add_argument("--tables-only", action="store_true", help="only redraw from finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("attention", help="draw fusion cross-attention maps (lyric tokens x music steps) to PNG",
                       description="The paper's Figure 3: for N songs of a split, the fusion block's attention weights "
                                   "(lyric tokens on the y axis, music time steps on the x axis), one row per model "
                                   "(e.g. BART-fusion above ALCAP). Songs come from the manifest and embedding store "
                                   "the models were trained with.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="music model directories (one row each)")
    p.add_argument("--songs", type=int, default=3, metavar="N", help="first N songs of the split (default: 3)")
    p.add_argument("--song-ids", nargs="+", metavar="ID", help="these songs instead of the first N")
    p.add_argument("--split", default="test", help="split the songs come from (default: test)")
    p.add_argument("--layer", type=int, default=-1, help="which fusion layer, as a list index (default: -1, the last)")
    p.add_argument("--max-tokens", type=int, default=40, metavar="N", help="lyric tokens shown (default: 40)")
    p.add_argument("--out", default="attention.png", metavar="PNG", help="figure file (default: attention.png)")
    p.set_defaults(func=cmd_attention)

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
    _decoding_speed_args(p)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N songs")
    p.add_argument("--no-retrieval", action="store_true", help="skip the text-to-music retrieval evaluation")
    p.add_argument("--retrieval-model", metavar="NAME_OR_DIR",
                   help="Sentence-BERT model for retrieval (default: the packaged all-MiniLM-L6-v2, offline)")
    p.add_argument("--query-seed", type=int, default=0, metavar="SEED",
                   help="seed that picks each song's query sentence (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("caption", help="caption audio files (with lyrics, or instrumental)",
                       description="Caption songs: decode each file, embed it with the music encoder the model was "
                                   "trained with, and generate. Lyrics come from --lyrics, else from a .txt or .lrc "
                                   "file next to the audio, else the song is treated as instrumental.")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (best/ of a training run)")
    p.add_argument("--lyrics", metavar="FILE|TEXT", help="lyrics for every file given: a text file or the text itself")
    p.add_argument("--jsonl", metavar="FILE", help='write {"file", "lyrics", "caption"} lines to FILE instead of printing')
    _device_arg(p)
    _decoding_speed_args(p)
    p.set_defaults(func=cmd_caption)

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

    data = sub.add_parser("data", help="manifests and corpora: validate, make-demo, import-si, import-ncm",
                          description="Work with manifests and corpora.").add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    p = data.add_parser("validate", help="report per row what is wrong with a manifest",
                        description="Check every row of a manifest: unreadable rows and bad encodings, missing or "
                                    "unreadable audio, empty captions, bad splits, duplicates, conflicting rows of "
                                    "one song. Prints a report; the exit code is non-zero only when no usable row remains.")
    p.add_argument("manifest", metavar="MANIFEST", help="manifest file (.jsonl, .csv or .parquet)")
    p.add_argument("--no-audio", action="store_true", help="do not open the audio files")
    p.add_argument("--decode", action="store_true", help="decode each file's excerpt too (slower; catches corrupt audio data)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON to FILE ('-' for stdout)")
    p.add_argument("--max-issues", type=int, default=50, metavar="N", help="issues to print (default: 50)")
    p.add_argument("--workers", type=int, default=4, metavar="N", help="threads checking audio files (default: 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _excerpt_args(p)
    p.set_defaults(func=cmd_validate)

    p = data.add_parser("make-demo", help="synthesise the embedded demo corpus (offline)",
                        description="Synthesise a corpus of songs with controlled audio attributes (tempo, instrument, "
                                    "mode, energy, drums), lyrics from a handful of themes and captions that state both; "
                                    "writes audio files (WAV/FLAC/OGG/MP3), manifest.jsonl and corpus.json.")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--songs", type=int, default=300, metavar="N", help="number of songs (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same corpus (default: 0)")
    p.add_argument("--captions-per-song", type=int, default=3, help="captions per song (default: 3)")
    p.add_argument("--min-seconds", type=float, default=15.0, help="shortest song in seconds (default: 15)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest song in seconds (default: 30)")
    p.add_argument("--alignment", type=float, default=0.6, metavar="P",
                   help="how loosely music follows the lyrics: each of a song's mode, tempo and energy takes its "
                        "theme's preferred value (heartbreak/loss: minor, slow; love/home: major, mid-tempo, gentle; "
                        "hope/freedom: major, fast, energetic) with probability P, else a uniform draw. 0 gives the "
                        "independent corpus of version 2 (default: 0.6)")
    p.add_argument("--instrumental-share", type=float, default=None, metavar="F",
                   help="share of songs that are instrumentals: no lyrics, captions about the music alone "
                        "(default: 0.15, or 0 with --alignment 0)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="synthesis processes (default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_demo)

    p = data.add_parser("import-si", help="Song Interpretation data set (CSV, pickle or JSON layout) -> manifest",
                        description="Convert the Song Interpretation data set to a manifest. Layouts: the CSV files "
                                    "df_{full|not_negative|positive}_{train|val}.csv + df_test.csv (--csv-dir), pickles "
                                    "of MusicData records (--pickle SPLIT=FILE, read by a restricted unpickler that "
                                    "builds nothing else), or JSON/JSONL copies of the records (--json SPLIT=FILE). "
                                    "Audio is <audio dir>/<music4all_id>.mp3. The variants share the test split.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv-dir", metavar="DIR", help="folder with the df_*.csv files")
    source.add_argument("--pickle", action="append", metavar="SPLIT=FILE", help="a pickle for a split (repeat per split)")
    source.add_argument("--json", action="append", metavar="SPLIT=FILE", help="a JSON/JSONL file for a split (repeat)")
    p.add_argument("--audio-dir", required=True, metavar="DIR", help="Music4All audio folder (<id>.mp3 files)")
    p.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (.jsonl)")
    p.add_argument("--variant", default="full",
                   help="full (SI-Full), not_negative (votes >= 0) or positive (votes > 0); default: full")
    p.add_argument("--id-field", default="music4all_id", help="record field with the song id (default: music4all_id)")
    p.add_argument("--lyrics-field", default="lyrics", help="record field with the lyrics (default: lyrics)")
    p.add_argument("--caption-field", default="comment", help="field with one interpretation (default: comment)")
    p.add_argument("--comments-field", default="comments",
                   help="field with [(text, votes), ...] interpretations (default: comments)")
    p.add_argument("--audio-ext", default=".mp3", help="audio file extension (default: .mp3)")
    p.set_defaults(func=cmd_import_si)

    p = data.add_parser("import-ncm", help="NCM reviews or any CSV/JSONL corpus -> manifest with a seeded split",
                        description="Convert a table of (song id, lyrics, review/caption, audio) to a manifest and split "
                                    "it at random by song (no song in two splits), reproducibly from --seed. Audio: the "
                                    "audio column relative to --audio-dir (or the table's folder), else "
                                    "<audio dir>/<song id><ext>.")
    p.add_argument("table", metavar="TABLE", help="CSV or JSONL file")
    p.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (.jsonl)")
    p.add_argument("--audio-dir", metavar="DIR", help="folder the audio paths are relative to")
    p.add_argument("--id-field", default="song_id", help="column with the song id (default: song_id)")
    p.add_argument("--lyrics-field", default="lyrics", help="column with the lyrics (default: lyrics)")
    p.add_argument("--caption-field", default="review", help="column with the review or caption (default: review)")
    p.add_argument("--audio-field", default="audio", help="column with the audio path; '' for none (default: audio)")
    p.add_argument("--audio-ext", default=".mp3", help="extension when the path comes from the id (default: .mp3)")
    p.add_argument("--ratios", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                   help="split ratios by song (default: 0.7 0.15 0.15)")
    p.add_argument("--seed", type=int, default=2020, help="seed of the random split (default: 2020)")
    p.set_defaults(func=cmd_import_table)

    store = sub.add_parser("store", help="inspect or merge embedding stores",
                           description="Inspect and merge embedding stores.").add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    p = store.add_parser("info", help="what a store holds and how it was built")
    p.add_argument("store", metavar="DIR", help="embedding store directory")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_store_info)
    p = store.add_parser("merge", help="join stores built the same way (e.g. the shards of `alcap embed --shard`)",
                         description="Copy the songs of SOURCE stores into OUT (created, or added to if it exists). "
                                     "The sources must have been built with the same encoder weights, sample rate "
                                     "and excerpt rule; a song in several sources is taken from the first. Songs "
                                     "that failed everywhere keep their failure records.")
    p.add_argument("out", metavar="OUT", help="the merged store directory")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="store directories to copy from")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_store_merge)

    lib = sub.add_parser("library", help="caption a catalogue into a library and search it by description",
                         description="A song library: captions of a whole catalogue in SQLite, their sentence "
                                     "vectors beside them, searchable by description (README, Song library)."
                         ).add_subparsers(dest="library_command", metavar="COMMAND", required=True)
    p = lib.add_parser("add", help="caption new or changed songs into a library (created if missing; resumable)",
                       description="Caption every song of SOURCE (audio files, directories searched recursively "
                                   "for audio by content, or manifests with song_id and audio; extra columns are "
                                   "kept as metadata) into the library LIB. Lyrics come from the manifest, else "
                                   "a .txt/.lrc file beside the audio, else none. A song is its manifest song_id, "
                                   "else the sha256 of its bytes: songs already in the library are skipped, failed "
                                   "ones retried. Each batch is committed on its own, so a killed run resumes.")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="audio files, directories or manifests")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="captioning model (e.g. runs/demo/alcap/seed-2020/best)")
    p.add_argument("--sentence-model", metavar="NAME_OR_DIR",
                   help="sentence-transformers model for the caption vectors (default: the packaged all-MiniLM-L6-v2); "
                        "fixed when the library is created")
    _device_arg(p)
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="songs per batch and per commit (default: 16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding worker processes; 0 decodes in the main process (default: 2)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="add at most N of the sources' songs")
    p.add_argument("--shard", metavar="K/N", help="only shard K of N (0-based) of the sources' files, for one machine of N")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_library_add)
    p = lib.add_parser("search", help="find songs by description (hybrid: dense + BM25), or like another song",
                       description="Rank the library's songs for a description. dense: Sentence-BERT query vs "
                                   "caption vectors, cosine (the paper's text-to-music retrieval); lexical: BM25 "
                                   "over captions, lyrics and metadata (SQLite FTS5); hybrid: reciprocal-rank "
                                   "fusion of the two, 1/(60 + rank) summed.")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("query", nargs="?", metavar="TEXT", help="the description, e.g. \"a slow piano song about leaving home\"")
    p.add_argument("--top", type=positive_int, default=10, metavar="K", help="number of songs (default: 10)")
    p.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid", help="how to rank (default: hybrid)")
    p.add_argument("--where", action="append", metavar="FILTER",
                   help="keep songs matching KEY OP VALUE (OP: = != < <= > >=; KEY: duration, path, id or a "
                        "metadata column), e.g. --where duration<200 --where genre=rock; repeatable (all must hold)")
    p.add_argument("--like", metavar="SONG_ID", help="songs whose captions are like this song's (instead of TEXT)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.set_defaults(func=cmd_library_search)
    for name, func, text in (("info", cmd_library_info, "what a library holds and how it was built"),
                             ("failures", cmd_library_failures, "the songs that could not be captioned, and why")):
        p = lib.add_parser(name, help=text)
        p.add_argument("library", metavar="LIB", help="library directory")
        p.add_argument("--json", action="store_true", help="print as JSON")
        p.set_defaults(func=func)
    p = lib.add_parser("evaluate", help="text-to-music retrieval of the three search modes (R@k, MRR)",
                       description="The paper's text-to-music retrieval through the library's search: for each "
                                   "song of a manifest split, one sentence of one of its reference captions "
                                   "(seeded, as `alcap evaluate`) is the query; R@1/5/10, MRR and mean rank per "
                                   "mode. Dense equals `alcap evaluate`'s retrieval on the same captions.")
    p.add_argument("library", metavar="LIB", help="library directory holding the split's songs")
    p.add_argument("--manifest", required=True, help="manifest with the songs' reference captions")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="the pool (default: test)")
    p.add_argument("--query-seed", type=int, default=0, help="seed of the query sentences (default: 0, as alcap evaluate)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_library_evaluate)
    p = lib.add_parser("export", help="write captions, lyrics and metadata to JSONL, CSV or Parquet")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("out", metavar="OUT", help="output file; .jsonl, .csv or .parquet")
    p.set_defaults(func=cmd_library_export)
    p = lib.add_parser("remove", help="remove songs by id or path")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("songs", nargs="+", metavar="ID_OR_PATH", help="song ids or audio paths")
    p.set_defaults(func=cmd_library_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .audio.cnnsa import CheckpointError
    from .audio.decode import AudioError
    from .audio.musicnn import MusicnnError
    from .data.manifest import ManifestError
    from .data.store import StoreError

    args = build_parser().parse_args(argv)
    import logging
    import signal

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("alcap: %(message)s"))
    root = logging.getLogger("alcap")
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # a library's basicConfig would print every line twice
    # SIGTERM (timeout, schedulers, `kill`) ends a command the way Ctrl-C does, so what is
    # done is kept and the command says so; the default handler would just vanish.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
    name = f"alcap {args.command}" + (f" {sub}" if (sub := getattr(args, "data_command", None) or
                                                      getattr(args, "store_command", None)) else "")
    try:
        return args.func(args)
    except (CheckpointError, MusicnnError, ManifestError, StoreError, AudioError, ValueError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{name}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; what was finished is kept, run the same command again to continue",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def describe_os_error(exc: OSError) -> str:
    """An operating-system error as one line that names the file and says what to do."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"{where}no space left on device. Free some space and run the same command again: finished work "
                "was kept (embedding stores keep every complete batch, training its last saved state)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}permission denied; choose a place this user can write to"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where}{exc.strerror}: a part of this path is a file, not a folder; choose another path"
    return f"{where}{exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
