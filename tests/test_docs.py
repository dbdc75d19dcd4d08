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


RUNNABLE = "<!-- runnable:"


def runnable_blocks(path: Path) -> list[str]:
    """Code blocks marked `<!-- runnable: ... -->` on the line before them."""
    return re.findall(r"^<!-- runnable:[^\n]*-->\n```[a-z]*\n(.*?)^```", path.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


@pytest.fixture
def demo_outputs(tiny_corpus, tiny_models, tmp_path, monkeypatch):
    """A working directory laid out as `make demo` leaves it, with tiny stand-ins: demo/corpus,
    runs/demo/{bart,bart-fusion,alcap}/seed-2020/best, configs/, and the files the docs name."""
    import csv
    import json

    work, home = tmp_path / "work", tmp_path / "home"
    shutil.copytree(tiny_corpus / "corpus", work / "demo" / "corpus")
    for method, model in (("bart", "lyrics"), ("bart-fusion", "music"), ("alcap", "music")):
        shutil.copytree(tiny_models[model].parent, work / "runs" / "demo" / method / "seed-2020",
                        ignore=shutil.ignore_patterns("states"))
    shutil.copytree(ROOT / "configs", work / "configs")
    audio = sorted((work / "demo" / "corpus" / "audio").iterdir())
    by_kind = {kind: [a for a in audio if a.suffix == kind] for kind in (".mp3", ".flac", ".wav")}
    shutil.copy(by_kind[".mp3"][0], work / "song.mp3")
    shutil.copy(by_kind[".wav"][0], work / "song.wav")
    (work / "lyrics.txt").write_text("I miss the porch where grandma used to sit\n")
    for folder, files in (("songs", by_kind[".wav"][:2]), ("more", by_kind[".flac"][:2]), (home / "Music", audio[:3])):
        (work / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, work / folder)
    rows = [json.loads(line) for line in (work / "demo" / "corpus" / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(work / "demo" / "corpus" / row["audio"])
    (work / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("manifest.csv", "catalogue.csv"):
        with open(work / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return work


def shell_words(words: str) -> list[str]:
    """The arguments bash makes of `words` (quotes, ~, globs and braces expanded), nothing run."""
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_the_runnable_blocks_run_on_the_demo_outputs(demo_outputs, capsys):
    from alcap.cli import main

    blocks = runnable_blocks(ROOT / "README.md")
    assert len(blocks) >= 6
    ran = 0
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" # ", 1)[0].strip()
            for command in filter(None, (c.strip() for c in line.split(" ; "))):
                assert command.startswith("alcap "), command
                if "SONG_ID" in command:  # the docs' placeholder: a song of the library just built
                    from alcap.library import Library

                    with Library.open("lib") as library:
                        command = re.sub(r"\bSONG_ID(_OR_PATH)?\b", library.songs()[0].id, command)
                words, _, redirect = command[len("alcap "):].partition(" > ")
                code = main(shell_words(words))
                out, err = capsys.readouterr()
                assert code == 0, f"`{command}` exited {code}: {err[-1500:]}"
                if redirect:
                    Path(redirect.strip()).write_text(out)
                ran += 1
    assert ran >= 20
    assert (demo_outputs / "runs" / "demo" / "report.md").is_file() and (demo_outputs / "captions.csv").stat().st_size
