"""The `alcap` command line: parse, call the library, print. No logic of its own.

One module per command group; each command's arguments sit next to its handler. Nothing here
imports torch until a command runs, so `alcap --help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from . import audio, caption, config, data, evaluate, library, serve, train

EPILOG = "Documentation: README.md. Every command prints its own --help."


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="alcap", description="Music captioning from audio and lyrics (ALCAP).", epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"alcap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    caption.add_caption(sub)
    library.add_library(sub)
    serve.add_serve(sub)
    data.add_data(sub)
    audio.add_tag(sub)
    audio.add_train_tagger(sub)
    audio.add_embed(sub)
    audio.add_store(sub)
    audio.add_encoder(sub)
    train.add_train(sub)
    train.add_experiment(sub)
    train.add_sweep(sub)
    config.add_config(sub)
    evaluate.add_evaluate(sub)
    evaluate.add_report(sub)
    evaluate.add_attention(sub)
    evaluate.add_alignment(sub)
    evaluate.add_probe(sub)
    evaluate.add_diagnose(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: --help and usage errors stay instant
    import logging
    import signal

    from ..audio.cnnsa import CheckpointError
    from ..audio.decode import AudioError
    from ..audio.musicnn import MusicnnError
    from ..data.manifest import ManifestError
    from ..data.store import StoreError

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
    group = next((getattr(args, key) for key in ("data_command", "store_command", "library_command", "config_command", "encoder_command", "diagnostic")
                  if getattr(args, key, None)), None)
    name = f"alcap {args.command}" + (f" {group}" if group else "")
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
