"""Every benchmark ends with one JSON line holding name, ours, baseline, unit and ratio."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, args", [
    ("generate_throughput.py", ["--quick", "--preset", "tiny", "--songs", "3", "--tokens", "4", "--batch-size", "3"]),
    ("generate_throughput.py", ["--quick", "--preset", "tiny", "--songs", "3", "--tokens", "4", "--batch-size", "3",
                                "--compile", "--baseline", "eager", "--repeats", "1"]),
    ("embed_throughput.py", ["--quick", "--songs", "3"]),
    ("train_throughput.py", ["--quick", "--preset", "tiny", "--steps", "1", "--batch-size", "4", "--gradient-checkpointing"]),
    ("memory.py", ["--quick", "--preset", "tiny", "--batch-size", "4", "--repeats", "1", "--gradient-checkpointing"]),
    ("flops.py", ["--quick", "--preset", "tiny", "--steps", "1", "--batch-size", "4", "--matmul-size", "256"]),
    ("cost_growth.py", ["--quick", "--preset", "tiny", "--batch-size", "4", "--batch-sizes", "1", "2",
                        "--song-counts", "1", "2"]),
    ("search_latency.py", ["--quick"]),
    ("library_add.py", ["--quick"]),
    ("train_loop.py", ["--quick", "--repeats", "1"]),
    ("cpu_captioning.py", ["--quick", "--preset", "tiny", "--songs", "3", "--tokens", "4", "--repeats", "1"]),
])
def test_benchmark_prints_a_ratio_line(script, args):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"name", "ours", "baseline", "unit", "ratio"} <= set(result)
    assert result["ours"] > 0 and result["baseline"] > 0
    assert result["ratio"] == pytest.approx(result["ours"] / result["baseline"], rel=0.01)
    assert result["name"] == script.removesuffix(".py") and "x" in lines[-2]
    if script == "search_latency.py":  # recall of the index measured against exact search, per size
        assert [s["songs"] for s in result["sizes"]] == [2000, 10000]
        assert all(0 < s["faiss_recall@10"] <= 1 and s["exact_p50_ms"] > 0 for s in result["sizes"])
    if "--compile" in args:  # the compile time apart from the rate
        assert result["compile"] is True and result["compile_seconds"] is not None and "compiling took" in lines[-2]
    if script == "library_add.py":
        assert set(result["rss"]) == {"6", "12"} and all(r["added"] == int(n) for n, r in result["rss"].items())
    if script == "cpu_captioning.py":  # one line per setting against float32 4-beam
        settings = [json.loads(line)["setting"] for line in lines if line.startswith("{")]
        assert settings == ["int8 4-beam", "float32 2-beam", "int8 2-beam", "float32 greedy", "int8 greedy"]
    if script == "cost_growth.py":  # the README's tables: one row per measured point
        assert "| 512 |" in done.stdout and "| 2 |" in done.stdout and set(result["embed_seconds_by_songs"]) == {"1", "2"}


def test_the_original_code_benchmark_skips_without_the_original_and_refuses_another_folder(tmp_path):
    script = [sys.executable, str(BENCHMARKS / "original_training.py")]
    env = {k: v for k, v in os.environ.items() if k != "ALCAP_ORIGINAL"}
    skipped = subprocess.run(script, capture_output=True, text=True, timeout=120, env=env)
    assert skipped.returncode == 0 and skipped.stdout.startswith("skipped: no original ALCAP checkout given")
    assert "git clone https://github.com/zihaohe123/ALCAP" in skipped.stdout
    (tmp_path / "models").mkdir()
    (tmp_path / "trainer.py").write_text("")
    refused = subprocess.run([*script, "--original", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{tmp_path} is not a checkout of the original ALCAP repository (no models/model.py, " in refused.stderr


def test_report_keeps_small_ratios_precise(capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import report
    finally:
        sys.path.remove(str(BENCHMARKS))
    report("x", 0.0021530265, 0.1, "GFLOP/s", "summary")  # rounding to 3 decimals printed 0.022 for 0.02153
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["ratio"] == pytest.approx(0.021530265, rel=1e-3) and line["ours"] == pytest.approx(0.0021530265, rel=1e-3)
