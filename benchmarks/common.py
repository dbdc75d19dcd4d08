"""Shared bits of the benchmarks: timing, the machine, and the result line every script ends with."""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from alcap.utils import cpu_info


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu_model()}), {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


# The instructions that decide how fast int8 and bf16 run on a CPU: the same script gave int8
# captioning 1.5x on one 2-core machine and 2.5x on another of the same kind.
CPU_FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_model() -> str:
    """The CPU's model name and its int8/bf16 instructions."""
    name, flags = cpu_info()
    features = [f for f in CPU_FEATURES if f in flags]
    return f"{name or platform.processor() or platform.machine()}; {', '.join(features) or 'no VNNI, BF16 or AMX'}"


def best_and_spread(rates: dict[str, list[float]], digits: int = 2) -> tuple[dict[str, float], str]:
    """Each way's best rate, and every way's range ("name lo-hi, ...") for the summary line."""
    best = {k: max(v) for k, v in rates.items()}
    return best, ", ".join(f"{k} {min(v):.{digits}f}-{max(v):.{digits}f}" for k, v in rates.items())


def best_of(fn, repeats: int, device: str = "cpu") -> float:
    """Fastest of `repeats` timed calls (seconds): the least disturbed by a noisy machine.
    On a GPU each call is timed to the end of its kernels, not of their launch."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def report(name: str, ours: float, baseline: float, unit: str, summary: str, **extra) -> None:
    """The one-line summary, then the JSON line (always the last line of the output)."""
    print(summary)
    print(json.dumps({"name": name, "ours": significant(ours), "baseline": significant(baseline), "unit": unit,
                      "ratio": significant(ours / baseline), "machine": machine(), **extra}))


def significant(x: float, digits: int = 4) -> float:
    """Rounded to significant digits, not decimals: a 2% FLOP fraction must not print as 0.022."""
    return float(f"{x:.{digits}g}")
