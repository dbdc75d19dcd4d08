"""Arguments and helpers that several command groups share."""

from __future__ import annotations

import argparse
from pathlib import Path

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value



def add_jobs_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="train up to N runs at a time (other methods, other seeds), each in its own process "
                             "with cores/N torch threads (default 1). Small models use extra threads poorly, so runs "
                             "side by side finish sooner: on 2 cores the demo's three fine-tunes took 240 s with "
                             "--jobs 3, 294 s one at a time")


def add_excerpt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("excerpt (which part of each song the music encoder hears)")
    group.add_argument("--excerpt-seconds", type=float, default=15.0, metavar="S",
                       help="length of the excerpt in seconds; 0 takes the whole file (default: 15, as ALCAP)")
    group.add_argument("--excerpt-position", choices=("middle", "start", "offset"), default="middle",
                       help="where the excerpt starts: the middle of the song, its start, or --excerpt-offset (default: middle)")
    group.add_argument("--excerpt-offset", type=float, default=0.0, metavar="S",
                       help="start of the excerpt in seconds, with --excerpt-position offset (default: 0)")


def excerpt_from(args):
    from ..audio.decode import Excerpt

    return Excerpt(seconds=args.excerpt_seconds or None, position=args.excerpt_position, offset=args.excerpt_offset)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device for the encoder: auto (CUDA when available), cpu, cuda, cuda:1, ... (default: auto)")


def add_decoding_speed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="songs decoded together; 64 pays on a GPU (default: the run's generation.batch_size, 16)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"),
                        help="autocast decoding on a GPU (ignored on the CPU) (default: the run's "
                             "generation.mixed_precision, no)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="decode with a static KV cache and a torch.compile'd decoding step (lyrics padded to "
                             "multiples of 64 tokens; each batch size and lyrics bucket compiles once, the first "
                             "batch of each pays it); for long jobs on a GPU; not with --quantize int8 (default: "
                             "the run's generation.compile, off)")
    add_quantize_arg(parser)


def add_quantize_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: quantise the captioner's linear layers (torch dynamic int8) for faster CPU "
                             "captioning, at a small quality cost (README, Performance, has the table); CPU only. "
                             "The music encoder stays float32 (default: none)")


def add_encoder_args(parser: argparse.ArgumentParser, random_init: bool) -> None:
    group = parser.add_argument_group("music encoder")
    group.add_argument("--encoder", choices=("musicnn-msd", "musicnn-mtt", "cnnsa"), default="cnnsa",
                       help="musicnn-msd / musicnn-mtt: musicnn pretrained on the Million Song Dataset / MagnaTagATune "
                            "(weights from the musicnn PyPI package, offline; 753 features at 3.68 steps/s); cnnsa: "
                            "ALCAP's CNNSA with --checkpoint%s (256 features) (default: cnnsa)"
                            % (" or --random-init" if random_init else ""))
    group.add_argument("--checkpoint", metavar="PATH",
                       help="CNNSA checkpoint file or directory (with --encoder cnnsa): best_model.pth of "
                            "minzwon/sota-music-tagging-models (models/msd/attention/), or just cnnsa-msd once "
                            "`alcap encoder download cnnsa-msd` has fetched it; a tagger made by `alcap train-tagger` (its tags.txt names the "
                            "tags), or a trained model's music_encoder/ (the encoder it was trained with)")
    if random_init:
        group.add_argument("--random-init", type=int, metavar="SEED",
                           help="a randomly initialised CNNSA with this seed (with --encoder cnnsa; tests and "
                                "baselines only: its features barely tell songs apart)")


def extractor_from(args):
    """The music encoder that --encoder, --checkpoint and --random-init name."""
    from ..audio.extractor import CNNSAExtractor, MusicnnExtractor

    if args.encoder != "cnnsa":
        if args.checkpoint or args.random_init is not None:
            raise ValueError(f"--encoder {args.encoder} uses the pretrained weights of the musicnn package; "
                             "--checkpoint and --random-init are for --encoder cnnsa")
        return MusicnnExtractor.from_package(args.encoder, device=args.device)
    if args.checkpoint:
        from ..inference import is_encoder_directory, load_music_encoder

        if is_encoder_directory(args.checkpoint):  # a model's music_encoder/: whichever encoder it carries
            return load_music_encoder(args.checkpoint, device=args.device)[0]
        return CNNSAExtractor.from_checkpoint(named_checkpoint(args.checkpoint), device=args.device)
    if args.random_init is not None:
        return CNNSAExtractor.random_init(args.random_init, device=args.device)
    raise ValueError("--encoder cnnsa needs its weights: --checkpoint PATH (the MSD checkpoint, or a tagger made "
                     "by `alcap train-tagger`) or --random-init SEED; or use --encoder musicnn-msd, pretrained offline")


def named_checkpoint(checkpoint: str) -> str:
    """--checkpoint as given, or for a public weights name (cnnsa-msd) that is not a path, the
    file `alcap encoder download` keeps."""
    from ..audio.weights import PUBLIC_WEIGHTS, downloaded_weights, weights_home

    if checkpoint not in PUBLIC_WEIGHTS or Path(checkpoint).exists():
        return checkpoint
    path = downloaded_weights(checkpoint)
    if path is None:
        raise ValueError(f"--checkpoint {checkpoint}: not downloaded yet (looked in {weights_home() / checkpoint}); "
                         f"run `alcap encoder download {checkpoint}` first")
    return str(path)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        shard, num_shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None
    return shard, num_shards


def check_writable(path: str | None, flag: str) -> None:
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


def given_lyrics(given: str | None) -> str | None:
    """--lyrics as a file or as the text itself."""
    from ..data.lyrics import read_text_file

    if given is None:
        return None
    path = Path(given)
    try:
        is_file = path.is_file()
    except OSError:  # text too long to be a file name (ENAMETOOLONG): the lyrics themselves
        is_file = False
    return read_text_file(path, "--lyrics file") if is_file else given
