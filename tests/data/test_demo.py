import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from alcap.data import demo
from alcap.data.demo import make_demo_corpus, plan_corpus, synthesize
from alcap.data.manifest import read_manifest
from alcap.data.validate import validate_manifest
from alcap.metrics.attributes import AttributeWords

WORDS = AttributeWords(demo.attribute_words())


def caption_attributes(text: str) -> dict:
    """The audio attributes a text states, by the demo's own words."""
    return {k: v for k, v in WORDS.stated(text).items() if v is not None and k != "theme"}

SMALL = dict(n_songs=8, min_seconds=2.0, max_seconds=3.0, workers=2, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, make_demo_corpus(out, seed=3, **SMALL)


def test_same_seed_same_corpus(corpus, tmp_path):
    out, summary = corpus
    again = make_demo_corpus(tmp_path, seed=3, **SMALL)
    assert (out / "manifest.jsonl").read_bytes() == (tmp_path / "manifest.jsonl").read_bytes()
    for path in sorted((out / "audio").iterdir()):
        a, ra = sf.read(str(path))
        b, rb = sf.read(str(tmp_path / "audio" / path.name))
        assert ra == rb and np.array_equal(a, b), path.name
    assert {k: v for k, v in again.items() if k != "generation_seconds"} == \
        {k: v for k, v in summary.items() if k not in ("generation_seconds", "manifest")} | {"manifest": again["manifest"]}
    other = make_demo_corpus(tmp_path / "other", seed=4, **SMALL)
    assert (tmp_path / "other" / "manifest.jsonl").read_bytes() != (out / "manifest.jsonl").read_bytes()
    assert other["seed"] == 4


def test_corpus_is_valid_and_described(corpus):
    out, summary = corpus
    manifest = read_manifest(out / "manifest.jsonl")
    report = validate_manifest(manifest, excerpt=demo_excerpt())
    assert report.n_usable == summary["rows"] == 8 * 3
    assert not [i for i in report.issues if i.severity == "error"]
    assert json.loads((out / "corpus.json").read_text())["songs"] == 8
    # The same parameters reuse the finished corpus instead of synthesising it again.
    assert make_demo_corpus(out, seed=3, **SMALL)["reused"] is True


def demo_excerpt():
    from alcap.audio.decode import Excerpt

    return Excerpt(seconds=2.0)


def test_captions_state_the_true_attributes_and_the_theme(corpus):
    out, _ = corpus
    assert AttributeWords.load(out / "attributes.json").words == WORDS.words  # the corpus's words, beside it
    rows = read_manifest(out / "manifest.jsonl").rows
    for row in rows:
        truth = {k: row.extra[k] for k in ("instrument", "tempo", "mode", "energy", "drums")}
        stated = caption_attributes(row.caption)
        assert {"instrument", "tempo", "mode"} <= set(stated), row.caption
        assert all(truth[k] == v for k, v in stated.items()), (row.caption, truth)
        assert WORDS.is_right("theme", WORDS.stated(row.caption)["theme"], row.extra["theme"]), row.caption


def test_instrumentals_have_no_lyrics_and_their_captions_no_theme(tmp_path):
    make_demo_corpus(tmp_path, seed=3, **{**SMALL, "n_songs": 6}, instrumental_share=0.5)
    rows = read_manifest(tmp_path / "manifest.jsonl").rows
    instrumentals = [r for r in rows if r.extra["theme"] == demo.INSTRUMENTAL]
    assert instrumentals and len(instrumentals) < len(rows)
    for row in instrumentals:
        assert row.lyrics == "" and WORDS.stated(row.caption)["theme"] is None, row.caption
        assert "instrumental" in row.caption.lower() or "no vocals" in row.caption.lower()


def test_aligned_corpus_follows_each_themes_character_with_probability_0_6():
    """P(preferred value | preferring theme) = 0.6 + 0.4 / k for an attribute of k values."""
    specs = [s for s in plan_corpus(6000, seed=0, alignment=0.6, instrumental_share=0.15)]
    sung = [s for s in specs if s.theme != demo.INSTRUMENTAL]
    assert abs(1 - len(sung) / len(specs) - 0.15) < 0.015
    for attribute, k in (("mode", 2), ("tempo", 3), ("energy", 2)):
        hits = [getattr(s, attribute) == demo.THEME_CHARACTER[s.theme][attribute] for s in sung
                if attribute in demo.THEME_CHARACTER.get(s.theme, {})]
        expected, n = 0.6 + 0.4 / k, len(hits)
        assert abs(np.mean(hits) - expected) < 4 * np.sqrt(expected * (1 - expected) / n), attribute
    for s in sung:  # a changed tempo keeps its bpm inside the tempo's range
        assert demo.TEMPOS[s.tempo][0] <= s.bpm < demo.TEMPOS[s.tempo][1]
    # Themes without a preference and instrumentals stay uniform.
    free = [s.mode == "major" for s in specs if s.theme in ("nature", "city", demo.INSTRUMENTAL)]
    assert abs(np.mean(free) - 0.5) < 4 * np.sqrt(0.25 / len(free))


def test_alignment_zero_is_the_independent_corpus_of_version_2():
    """The uniform draws come first, so alignment 0 reproduces the earlier corpus's songs; the
    aligned corpus changes only theme-preferred attributes and instrumentals."""
    independent = plan_corpus(300, seed=0, alignment=0.0)
    aligned = plan_corpus(300, seed=0, alignment=0.6, instrumental_share=0.15)
    assert [s.instrument for s in independent] == [s.instrument for s in aligned]
    assert [s.seed for s in independent] == [s.seed for s in aligned]
    changed = [(a, b) for a, b in zip(independent, aligned) if a != b]
    assert changed and all(b.theme in (*demo.THEME_CHARACTER, demo.INSTRUMENTAL) for _, b in changed)
    # Every song's draw of corpus version 2 (seed 0), hashed when that code generated it.
    draws = repr([(x.tempo, x.bpm, x.instrument, x.mode, x.energy, x.drums, x.theme, x.seconds) for x in independent])
    assert hashlib.sha256(draws.encode()).hexdigest() == \
        "ca0a60738595e838ca441644387bfabf2d8d341afe2e2d114c2dc6934504f1fb"


def test_lyrics_say_nothing_about_the_audio():
    for lines in demo._LYRIC_LINES.values():
        for line in lines:
            assert caption_attributes(line) == {}, line


def test_plan_mixes_formats_rates_channels_and_splits():
    specs = plan_corpus(300, seed=0)
    assert {s.ext for s in specs} == {"wav", "flac", "ogg", "mp3"}
    assert {s.sample_rate for s in specs} == {16000, 22050, 32000, 44100} and {s.channels for s in specs} == {1, 2}
    assert {s.subtype for s in specs if s.ext == "wav"} == {"PCM_16", "PCM_24", "FLOAT"}
    splits = {name: sum(s.split == name for s in specs) for name in ("train", "val", "test")}
    assert splits == {"train": 210, "val": 45, "test": 45}
    assert all(15.0 <= s.seconds <= 30.0 for s in specs)
    # The theme is drawn independently of the audio: every theme meets both modes and several instruments.
    for theme in demo.THEMES:
        of_theme = [s for s in specs if s.theme == theme]
        assert {s.mode for s in of_theme} == {"major", "minor"} and len({s.instrument for s in of_theme}) >= 4


def _variant(**changes):
    base = plan_corpus(1, seed=0)[0]
    fields = {**base.__dict__, "seconds": 6.0, "sample_rate": 16000, "channels": 1, **changes}
    return demo.SongSpec(**fields)


def _db(x):
    return 10 * np.log10(np.mean(x**2) + 1e-12)


def test_attributes_are_audible():
    gentle = synthesize(_variant(energy="gentle", drums=False))[:, 0]
    loud = synthesize(_variant(energy="energetic", drums=False))[:, 0]
    assert _db(loud) - _db(gentle) > 10
    # Drums add broadband noise (snare, hi-hat) where the instruments have little energy.
    def band_share(x, lo=3000, hi=8000):
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / 16000)
        return power[(freqs >= lo) & (freqs < hi)].sum() / power.sum()

    for instrument in demo.INSTRUMENTS:
        for energy in demo.ENERGIES:
            with_drums = synthesize(_variant(drums=True, instrument=instrument, energy=energy))[:, 0]
            without = synthesize(_variant(drums=False, instrument=instrument, energy=energy))[:, 0]
            assert band_share(with_drums) > 5 * band_share(without), (instrument, energy)
    # Faster tempo: more note onsets in the same time.
    def onsets(x):
        env = np.abs(x).reshape(-1, 160).max(axis=1)  # 10 ms envelope
        return int(np.sum(np.diff(env) > 0.2 * env.max()))

    assert onsets(synthesize(_variant(tempo="fast", bpm=150, instrument="piano", drums=False))[:, 0]) > \
        onsets(synthesize(_variant(tempo="slow", bpm=65, instrument="piano", drums=False))[:, 0])
