"""`alcap tag | train-tagger | embed | store`: the music encoder and its embedding stores."""

from __future__ import annotations

import errno
import json
import sys

from .common import add_device_arg, add_encoder_args, add_excerpt_args, excerpt_from, extractor_from, parse_shard


def add_tag(sub) -> None:
    p = sub.add_parser("tag", help="top tags of audio files from the music encoder's tagging head (checks that its "
                                   "weights loaded)",
                       description="Print the most probable of the music encoder's tags for each audio file: the 50 "
                                   "MSD tags of musicnn-msd or of the CNNSA checkpoint, the 50 MagnaTagATune tags of "
                                   "musicnn-mtt, or a trained tagger's own. musicnn averages its taggram over the "
                                   "excerpt's 3 s patches, as its own top_tags does. A quick check that real weights "
                                   "loaded: rock songs should say rock.")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (WAV, FLAC, OGG, MP3; any rate and channel count)")
    add_encoder_args(p, random_init=False)
    p.add_argument("--top", type=int, default=5, metavar="K", help="number of tags to print per file; 50 prints all (default: 5)")
    p.add_argument("--json", action="store_true", help='one JSON object per line: {"file": ..., "tags": {"rock": 0.91, ...}}')
    p.add_argument("--full-track", action="store_true",
                   help="average the tags over consecutive excerpt-length windows of the whole file instead of one excerpt")
    add_excerpt_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_tag)


def cmd_tag(args) -> int:
    import numpy as np
    import torch

    from ..audio.decode import AudioError, TrackWindows, load_audio
    from ..audio.tags import top_tags

    args.random_init = None
    extractor = extractor_from(args)
    names = extractor.tag_names()
    excerpt = excerpt_from(args)
    failed = 0
    for path in args.audio:
        try:
            if args.full_track:  # streamed window by window; the tags are averaged over the windows
                probs, windows = 0.0, 0
                for window in TrackWindows(path, extractor.sample_rate, args.excerpt_seconds or 15.0):
                    probs, windows = probs + extractor.tag(torch.from_numpy(window[None]))[0].numpy(), windows + 1
                probs = probs / windows
            else:
                clip = load_audio(path, extractor.sample_rate, excerpt)
                probs = extractor.tag(torch.from_numpy(clip.samples[None]))[0].numpy()
        except AudioError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": str(path), "error": exc.reason}), flush=True)
            continue
        tags = top_tags(np.asarray(probs), args.top, names)
        if args.json:
            print(json.dumps({"file": str(path), "tags": tags}, ensure_ascii=False), flush=True)
        else:
            print(path)
            for name, p in tags.items():
                print(f"  {name:<20} {p:.3f}")
    return 1 if failed else 0


def add_train_tagger(sub) -> None:
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
    add_excerpt_args(p)
    p.set_defaults(func=cmd_train_tagger)


def cmd_train_tagger(args) -> int:
    import numpy as np
    import torch

    from ..audio.decode import AudioError, load_audio
    from ..audio.tagger import TaggerConfig, TagSchema, save_tagger, train_tagger
    from ..data.manifest import read_manifest

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
    excerpt = excerpt_from(args)
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


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="precompute frozen music embeddings for every song of a manifest",
                       description="Decode every distinct song of a manifest, run the frozen music encoder and write "
                                   "its sequence output (h_m: musicnn's mid end, L_m x 753, or CNNSA's last layer, "
                                   "L_m x 256) into an embedding store. Songs already in "
                                   "the store are skipped, so an interrupted run resumes; files that cannot be decoded "
                                   "are reported and recorded in failures.jsonl, and the others are still embedded.")
    p.add_argument("manifest", metavar="MANIFEST", help="manifest file (.jsonl, .csv or .parquet; see README)")
    p.add_argument("--out", required=True, metavar="DIR", help="embedding store directory (created, or resumed if it exists)")
    add_encoder_args(p, random_init=True)
    p.add_argument("--split", nargs="+", metavar="NAME", help="embed only songs of these splits (default: all rows)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="songs per encoder call (default: 16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding worker processes; 0 decodes in the main process (default: 2)")
    p.add_argument("--shard", metavar="K/N",
                   help="embed only shard K (0-based) of N: every N-th song in sorted id order. Run the N shards on "
                        "different machines or processes, each into its own --out, then join them with "
                        "`alcap store merge`")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_excerpt_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> int:
    from ..data.embed import embed_songs
    from ..data.manifest import read_manifest
    from ..data.store import EmbeddingStore

    manifest = read_manifest(args.manifest)
    rows = [r for r in manifest.rows if not args.split or r.split in args.split]
    songs: dict[str, str] = {}
    for row in rows:
        songs.setdefault(row.song_id, row.audio)
    if args.shard:
        from ..data.embed import shard_of

        shard, num_shards = parse_shard(args.shard)
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
    extractor = extractor_from(args)
    print(f"embedding {len(songs)} songs from {args.manifest} with {extractor.name} "
          f"({extractor.describe()['weights_source']}, sha256 {extractor.weights_sha256[:12]}) on {extractor.device}",
          file=sys.stderr)
    try:
        report = embed_songs(songs, extractor, args.out, excerpt=excerpt_from(args), batch_size=args.batch_size,
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


def add_store(sub) -> None:
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


def cmd_store_info(args) -> int:
    from ..data.store import EmbeddingStore

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


def cmd_store_merge(args) -> int:
    from ..data.store import merge_stores

    summary = merge_stores(args.out, args.sources)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"merged {len(args.sources)} stores into {args.out}: {summary['songs']} songs "
              f"({summary['copied']} copied, {summary['already_in_output']} already there, "
              f"{summary['duplicates']} duplicates skipped, {summary['failures']} failures carried over)")
    return 0


def add_encoder(sub) -> None:
    p = sub.add_parser("encoder", help="fetch public music-encoder weights (the MSD CNNSA checkpoint ALCAP uses)",
                       description="Public music-encoder weights by name. `download` fetches them into the weights "
                                   "folder (encoders/ in $ALCAP_CACHE, else ~/.cache/alcap), after which "
                                   "`--checkpoint NAME` finds them; `list` shows what is known and what is there.")
    inner = p.add_subparsers(dest="encoder_command", metavar="SUBCOMMAND", required=True)
    d = inner.add_parser("download", help="fetch and verify public weights",
                         description="Download NAME's weights from where they are published, verify them (the sha256 "
                                     "where it is recorded or given with --sha256, and a strict load in the public "
                                     "checkpoint layout) and keep them under DIR/. Weights already there are not "
                                     "fetched again. Without a network it says where to put a copy fetched elsewhere.")
    d.add_argument("name", metavar="NAME", choices=("cnnsa-msd",), help="weights to fetch: cnnsa-msd")
    d.add_argument("--dir", metavar="DIR", help="folder to keep them in (default: the weights folder/NAME)")
    d.add_argument("--url", metavar="URL", help="fetch from this address instead (a mirror)")
    d.add_argument("--sha256", metavar="HEX", help="refuse a file whose sha256 differs from this")
    d.add_argument("--json", action="store_true", help="print the result as one JSON object")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_encoder_download)
    ls = inner.add_parser("list", help="known public weights, where they are published and whether they are here")
    ls.set_defaults(func=cmd_encoder_list)


def cmd_encoder_download(args) -> int:
    from ..audio.weights import download_weights

    result = download_weights(args.name, args.dir, url=args.url, sha256=args.sha256, progress=not args.quiet)
    if args.json:
        print(json.dumps(result))
        return 0
    how = "fetched" if result["fetched"] else "already there"
    check = "sha256 verified" if result.get("sha256_verified") else "loaded in the public layout; sha256"
    print(f"{args.name}: {how}: {result['path']}\n  {check} {result['sha256']}\n"
          f"  use it with --checkpoint {args.name} (or --checkpoint {result['path']})")
    return 0


def cmd_encoder_list(args) -> int:
    from ..audio.weights import PUBLIC_WEIGHTS, downloaded_weights, weights_home

    for name, entry in PUBLIC_WEIGHTS.items():
        path = downloaded_weights(name)
        print(f"{name}: {entry.about}\n  published at {entry.url}\n  "
              + (f"here: {path}" if path else f"not downloaded (would be kept in {weights_home() / name})"))
    return 0
