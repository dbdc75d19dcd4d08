"""The README and docs/ cannot rot: every `alcap` command in them parses with today's CLI,
and the quick start runs as written (on a tiny model standing in for the demo's)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alcap.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """Shell lines of a block that run alcap (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        for prefix in (".venv/bin/alcap ", "alcap ", "accelerate launch -m alcap.cli "):
            if line.startswith(prefix):
                found.append(line[len(prefix):])
                break
        else:
            if "accelerate launch" in line and "-m alcap.cli " in line:
                found.append(line.split("-m alcap.cli ", 1)[1])
    return found


def argv_of(command: str) -> list[str]:
    argv = []
    for token in shlex.split(command, comments=True):
        if token in (">", "|", ";", "&&") or token.startswith(">"):
            break  # the shell's part
        argv.append(token)
    return argv


DOCUMENTED = [(path.name, c) for path in DOCS for block in code_blocks(path) for c in commands(block)]


def test_the_docs_show_commands():
    assert len(DOCUMENTED) > 60  # the extraction finds them (a broken pattern would find none)


@pytest.mark.parametrize("where, command", DOCUMENTED, ids=[f"{w}: {c[:60]}" for w, c in DOCUMENTED])
def test_every_documented_command_parses(where, command):
    argv = argv_of(command)
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # a sub-parser's error exits; its message went to stderr
        pytest.fail(f"{where}: `alcap {command}` does not parse (exit {exc.code})")


def test_the_quick_start_runs_as_written(tiny_corpus, tiny_models, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start"):readme.index("## The demo")]
    shell, output, python = code_blocks_of(quick)
    model = tmp_path / "runs" / "demo" / "alcap" / "seed-2020" / "best"  # where `make demo` leaves it
    shutil.copytree(tiny_models["music"], model)
    song = next((tiny_corpus / "corpus" / "audio").glob("*.mp3"))
    shutil.copy(song, tmp_path / "my_song.mp3")
    (tmp_path / "my_song.txt").write_text("Better days are coming, I believe\nHold on, the night is almost over\n")
    (argv,) = [argv_of(c) for c in commands(shell)]
    done = subprocess.run([sys.executable, "-m", "alcap.cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("my_song.mp3: ") and output.startswith("my_song.mp3: ")  # the shown output's form
    ran = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    caption = done.stdout.rstrip("\n")[len("my_song.mp3: "):]
    assert ran.stdout.rstrip("\n") == caption  # the same caption from Python


def code_blocks_of(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
