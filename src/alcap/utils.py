"""Small helpers shared by the library and the application."""

from __future__ import annotations

import functools
from pathlib import Path


def nested_differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Leaf-level differences between two nested dicts, as (dotted key, value in a, value in b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += nested_differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read 1 MiB at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def die_with_parent() -> None:
    """Ask Linux to kill this (worker) process when its parent dies, by kill -9 too.

    Forked workers otherwise outlive a killed job and keep its files and memory until someone
    kills them by hand. Elsewhere this is a no-op.
    """
    import ctypes
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def reuse_freed_memory() -> bool:
    """Keep memory that tensors free inside this process for the next ones (glibc only).

    glibc hands every freed block over its mmap threshold (at most 32 MB) back to the kernel,
    so each training step's large tensors (activations, logits, gradients: hundreds of MB) are
    faulted in and zeroed page by page again, which on a 2-core machine took a third of a
    bart-base step in kernel time. With mmap off and the trim threshold at its maximum, freed
    blocks stay in the heap and are reused: the resident size stays at its high-water mark
    (what peak RSS measures anyway) instead of rising and falling every step. It settles over
    the first steps: torch asks for 64-byte-aligned blocks, which a freed block of exactly the
    same size cannot hold until it has coalesced with its freed neighbours. True if glibc
    took the settings; False elsewhere (other C libraries, other systems), where nothing changes.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's; musl has mallopt but ignores these options
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def refused_pickle(exc: BaseException) -> str | None:
    """What a weights-only `torch.load` refused, in words, or None for other errors.

    torch's own message advises `weights_only=False`, which would run the file's code: alcap
    never does that, so it never repeats the advice."""
    import pickle
    import re

    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in str(exc):
        return None
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    what = f" (a pickled {found.group(1)})" if found else ""
    return (f"holds Python objects other than tensors{what}, which alcap does not load since unpickling them "
            "could run code")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str | None, frozenset[str]]:
    """The CPU's model name and instruction-set flags from /proc/cpuinfo (Linux; elsewhere
    (None, no flags)): what decides which int8/bf16 kernels run."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None, frozenset()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, frozenset(flags)


def compute_environment() -> dict:
    """What decides the exact floating-point results of a run besides its config and seed: the
    thread count (it sets the order of reductions), the CPU's vector ISA (which kernels oneDNN
    and MKL pick), the GPU, and the library versions. Two runs agree bit for bit only where
    all of these agree; recorded beside every result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(), "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {name: ver(name) for name in ("alcap", "torch", "numpy", "transformers", "tokenizers", "accelerate",
                                                  "safetensors", "soundfile", "soxr")},
    }


def setting(default=None, help: str = "", *, factory=None):
    """A dataclass field that carries its meaning, so one description serves the code, `alcap
    config show` and docs/config.md."""
    from dataclasses import field

    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def current_umask() -> int:
    """The process umask, read without changing it (Linux's /proc), else by setting it back."""
    import os

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_as_umask(root) -> None:
    """Give the files under `root` the permissions a newly created file gets (0666 minus the
    umask). safetensors writes its files 0600, so a model exported into a group's directory
    would otherwise be unreadable to the group."""
    import os
    from pathlib import Path

    mode = 0o666 & ~current_umask()
    root = Path(root)
    for path in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


def alcap_cache():
    """alcap's own cache folder: $ALCAP_CACHE, else $XDG_CACHE_HOME/alcap, else ~/.cache/alcap."""
    import os
    from pathlib import Path

    root = os.environ.get("ALCAP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alcap"
    return Path(root).expanduser()
