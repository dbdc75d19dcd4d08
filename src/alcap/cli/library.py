"""`alcap library ...`: caption a catalogue into a library and search it."""

from __future__ import annotations

import json
import sys

from .common import add_device_arg, add_quantize_arg, parse_shard, positive_int


def add_library(sub) -> None:
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
    add_device_arg(p)
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="songs per batch and per commit (default: 16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding worker processes; 0 decodes in the main process; with --engine ray, the most decoding tasks at once (default: 2)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="add at most N of the sources' songs")
    p.add_argument("--shard", metavar="K/N", help="only shard K of N (0-based) of the sources' files, for one machine of N")
    p.add_argument("--split", nargs="+", metavar="NAME", help="only manifest rows of these splits (e.g. val test)")
    p.add_argument("--embeddings", metavar="STORE",
                   help="an embedding store of the manifest's songs made by `alcap embed` with the model's music "
                        "encoder and excerpt (checked): their stored h_m are used instead of decoding and encoding "
                        "the audio again. The store must come from the same audio files")
    p.add_argument("--full-track", nargs="?", const="pool", choices=("pool", "concat"), metavar="MODE",
                   help="hear whole tracks, as `alcap caption --full-track` does (pool, the default, or concat); "
                        "fixed when the library is created")
    add_quantize_arg(p)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine's processes; ray: the same stages on a Ray cluster (decoding in tasks, "
                        "captioning in actors, a GPU each where there are GPUs; this process commits), for catalogues "
                        "that outgrow one machine; needs pip install 'alcap[ray]' (default: local)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: the cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, "
                        "else a new local instance)")
    p.add_argument("--ray-actors", type=positive_int, default=1, metavar="N",
                   help="with --engine ray: captioning actors, each loading the model once (default: 1)")
    p.add_argument("--ray-actor-cpus", type=float, default=1.0, metavar="N",
                   help="with --engine ray: CPUs reserved per captioning actor, also its torch threads (default: 1)")
    _index_arg(p, "--index")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_library_add)
    p = lib.add_parser("recaption", help="caption every song again with another model (replaces the library when done)",
                       description="Redo all songs of LIB with MODEL_DIR (and, if given, another sentence model): "
                                   "the new captions are built into LIB.recaption beside it, resumable like `add`, "
                                   "and replace LIB only once every song is in; until then LIB stays as it was and "
                                   "locked against adds. Songs keep their ids, paths, lyrics and metadata.")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="the new captioning model")
    p.add_argument("--sentence-model", metavar="NAME_OR_DIR",
                   help="sentence-transformers model for the new caption vectors (default: the packaged all-MiniLM-L6-v2)")
    add_device_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="songs per batch (default: 16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding worker processes (default: 2)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_library_recaption)
    p = lib.add_parser("merge", help="join libraries built with the same models (e.g. the shards of `add --shard`)",
                       description="Copy the songs of the SOURCE libraries into OUT (created, or added to). All must "
                                   "have been built with the same captioning model, generation settings and "
                                   "sentence model; a song in several is taken from the first. Vectors are copied "
                                   "as stored; failures are carried over unless the file was captioned elsewhere. "
                                   "README, Song library, shows a Slurm array that builds the shards.")
    p.add_argument("out", metavar="OUT", help="the merged library directory")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="library directories to copy from")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_library_merge)
    p = lib.add_parser("index", help="build, update or drop the approximate (FAISS) vector index",
                       description="Bring the library's vector index up to date now, as POLICY says (see "
                                   "`library add --index`); prints the index's state and its measured recall@10.")
    p.add_argument("library", metavar="LIB", help="library directory")
    _index_arg(p, "policy")
    p.add_argument("--json", action="store_true", help="print the index state as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_library_index)
    p = lib.add_parser("search", help="find songs by description (hybrid: dense + BM25), or like another song",
                       description="Rank the library's songs for a description. dense: Sentence-BERT query vs "
                                   "caption vectors, cosine (the paper's text-to-music retrieval); lexical: BM25 "
                                   "over captions, lyrics and metadata (SQLite FTS5); hybrid: reciprocal-rank "
                                   "fusion of the two, 1/(60 + rank) summed.")
    p.add_argument("library", metavar="LIB", help="library directory")
    p.add_argument("queries", nargs="*", metavar="TEXT",
                   help="the description, e.g. \"a slow piano song about leaving home\"; several are searched in "
                        "turn (encoded together, the models loaded once)")
    p.add_argument("--top", type=positive_int, default=10, metavar="K", help="number of songs (default: 10)")
    p.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid", help="how to rank (default: hybrid)")
    p.add_argument("--where", action="append", metavar="FILTER",
                   help="keep songs matching KEY OP VALUE (OP: = != < <= > >=; KEY: duration, path, id or a "
                        "metadata column), e.g. --where duration<200 --where genre=rock; repeatable (all must hold)")
    p.add_argument("--like", metavar="SONG_ID", help="songs whose captions are like this song's (instead of TEXT)")
    p.add_argument("--exact", action="store_true",
                   help="exact search over every vector even where the library has an approximate index")
    p.add_argument("--json", action="store_true",
                   help="print the hits as a JSON list; with several TEXTs one line per query: "
                        '{"query": TEXT, "hits": [...]}')
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


def _index_arg(parser, name: str) -> None:
    from ..library.policy import AUTO_ROWS, POLICIES

    text = (f"auto: exact search, and an approximate FAISS index (IVF, float16) once the library has "
            f"{AUTO_ROWS:,} songs; faiss: the index at any size; exact: no index (removes one). The choice is "
            "kept in the library")
    if name.startswith("--"):
        parser.add_argument(name, choices=POLICIES, metavar="POLICY",
                            help=text + " (default: the library's choice, auto for a new library)")
    else:
        parser.add_argument(name, nargs="?", choices=POLICIES, metavar="POLICY",
                            help=text + " (default: the library's choice)")


def cmd_library_add(args) -> int:
    from ..library.build import add_songs

    report = add_songs(args.library, args.model, args.sources, sentence_model=args.sentence_model, device=args.device,
                       batch_size=args.batch_size or 16, workers=args.workers, limit=args.limit,
                       shard=parse_shard(args.shard) if args.shard else None, index=args.index,
                       splits=args.split, embeddings=args.embeddings, full_track=args.full_track,
                       quantize=args.quantize, engine=args.engine, ray_address=args.ray_address,
                       ray_actors=args.ray_actors, ray_actor_cpus=args.ray_actor_cpus, progress=not args.quiet)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"library {report.library}: {report.added} songs added, {report.skipped} already there, "
              f"{report.failed} failed, in {report.seconds:.1f} s"
              + (f"; `alcap library failures {report.library}` lists why" if report.failed else ""))
        print(f"search: {describe_index(report.index)}")
    return 0 if report.failed == 0 else 1


def cmd_library_search(args) -> int:
    from ..library import Library

    if args.like is not None and args.queries:
        raise ValueError("give a description or --like SONG_ID, not both")
    with Library.open(args.library) as library:
        options = dict(k=args.top, mode=args.mode, where=args.where, exact=args.exact)
        if len(args.queries) <= 1:
            results = [(None, library.search(args.queries[0] if args.queries else None, like=args.like, **options))]
        else:
            vectors = library.encoder().encode(args.queries) if args.mode != "lexical" else [None] * len(args.queries)
            results = [(q, library.search(q, vector=v, **options)) for q, v in zip(args.queries, vectors)]
    for query, hits in results:
        if args.json:
            found = [h.to_dict() for h in hits]
            print(json.dumps(found, indent=2, ensure_ascii=False) if query is None else
                  json.dumps({"query": query, "hits": found}, ensure_ascii=False))
            continue
        if query is not None:
            print(f'"{query}"')
        if not hits:
            print("  no songs match")
        for rank, hit in enumerate(hits, start=1):
            print(f"{rank:>3}. {hit.score:.4f}  {hit.id[:16]}  {hit.path}\n     {hit.caption}")
    return 0


def cmd_library_info(args) -> int:
    from ..library import Library

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
    print(f"  sentence model: {info['identity']['sentence_model']['name']} ({info['dim']}-d); "
          f"{info['vector_rows']} vector rows ({info['unused_rows']} unused, of removed songs)")
    print(f"  search: {describe_index(info['index'])}")
    return 0


def describe_index(index: dict) -> str:
    if index["kind"] == "exact":
        return (f"exact (index policy {index['policy']}: an approximate index is built from "
                f"{index['auto_rows']:,} songs on)" if index["policy"] == "auto" else
                f"exact (index policy {index['policy']})")
    recall = index.get("recall@10")
    measured = (f"recall@10 {recall:.3f} against exact search on {index.get('recall_queries')} library vectors"
                if recall is not None else "recall@10 not measured for this state; `alcap library index` measures it")
    stale = f", {index['unindexed_rows']} newer rows searched exactly" if index.get("unindexed_rows") else ""
    return (f"{index['kind']} over {index['indexed_rows']} rows ({index['nlist']} lists, nprobe {index['nprobe']}; "
            f"{measured}{stale}; policy {index['policy']})")


def cmd_library_recaption(args) -> int:
    from ..library.build import recaption

    report = recaption(args.library, args.model, sentence_model=args.sentence_model, device=args.device,
                       batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"library {report.library}: {report.added + report.skipped} songs captioned with {args.model} "
              f"({report.skipped} of them by an earlier, interrupted run) in {report.seconds:.1f} s")
    return 0


def cmd_library_merge(args) -> int:
    from ..library.store import merge_libraries

    summary = merge_libraries(args.out, args.sources, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"merged {len(args.sources)} libraries into {args.out}: {summary['songs']} songs "
              f"({summary['copied']} copied, {summary['already_in_output']} already there, "
              f"{summary['duplicates']} duplicates skipped, {summary['failures']} failures carried over)")
    return 0


def cmd_library_index(args) -> int:
    from ..library import Library

    with Library.open(args.library, write=True) as library:
        library.update_index(args.policy, progress=not args.quiet)
        info = library.info()["index"]
    print(json.dumps(info, indent=2) if args.json else f"library {args.library}: search {describe_index(info)}")
    return 0


def cmd_library_failures(args) -> int:
    from ..library import Library

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
    from ..library import Library

    with Library.open(args.library) as library:
        count = library.export(args.out)
    print(f"{count} songs written to {args.out}")
    return 0


def cmd_library_remove(args) -> int:
    from ..library import Library

    with Library.open(args.library, write=True) as library:
        removed = library.remove(args.songs)
    print(f"removed {len(removed)} songs" + (f": {', '.join(removed)}" if removed else ""))
    return 0 if removed else 1


def cmd_library_evaluate(args) -> int:
    from ..data.manifest import read_manifest
    from ..evaluate import songs_with_references
    from ..library import Library
    from ..library.store import evaluate_search

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
