"""The swap diagnostic: what each stated attribute follows, and how far the fusion moves the lyric states."""

import json

import numpy as np
import pytest
import torch

from alcap.diagnose import derangement, fusion_update_norms, swap_diagnostic, swap_table
from alcap.inference import Captioner
from alcap.metrics.attributes import AttributeWords

WORDS = AttributeWords({"instrument": {"piano": ["piano"], "flute": ["flute"]},
                        "theme": {"love": ["love"], "loss": ["grief"], "instrumental": []}})


def test_derangement_moves_every_song():
    for n in (2, 3, 10, 45):
        partner = derangement(n, seed=n)
        assert sorted(partner) == list(range(n)) and all(p != i for i, p in enumerate(partner))
    with pytest.raises(ValueError):
        derangement(1)


def test_swap_table_by_hand():
    items = [{"attributes": {"instrument": "piano", "theme": "love"}},
             {"attributes": {"instrument": "flute", "theme": "loss"}},
             {"attributes": {"instrument": "flute", "theme": "instrumental"}}]
    partner = [1, 2, 0]  # song 0 hears song 1's music, 1 hears 2's, 2 hears 0's
    own = ["piano, love", "flute, grief", "flute"]
    swapped = ["flute, love", "flute, love", "piano, grief"]
    table = swap_table(items, own, swapped, partner, WORDS)
    # instrument pairs that differ: (0 <- 1) and (2 <- 0); both swapped captions name the music's instrument
    assert table["instrument"] == {"songs": 3, "own_right": 1.0, "pairs": 2, "follows_music": 1.0,
                                   "follows_lyrics": 0.0, "neither": 0.0}
    # theme: every pair differs; 0 keeps its lyrics' love, 1 says love (neither loss nor instrumental's
    # silence), 2 (instrumental lyrics) says grief, which is neither its silence nor song 0's love
    assert table["theme"]["pairs"] == 3
    assert table["theme"]["follows_lyrics"] == pytest.approx(1 / 3)
    assert table["theme"]["follows_music"] == pytest.approx(0.0)
    assert table["theme"]["neither"] == pytest.approx(2 / 3)


def test_update_norms_match_the_fusion_maths(tiny_models, tiny_corpus):
    from alcap.data.store import EmbeddingStore

    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    store = EmbeddingStore.open(tiny_corpus / "store")
    songs = list(store)[:3]
    music = [store.get(s) for s in songs]
    lyrics = ["a line about love", "grief and rain and a long goodbye", ""]
    norms = fusion_update_norms(captioner, lyrics, music)
    assert [n["layer"] for n in norms] == captioner.model.config.fusion_layers
    assert all(n["update_over_states"] > 0 for n in norms)
    # "update" adds the update and nothing else: the block's change is the update's.
    assert captioner.model.fusion[0].norm == "update"
    for n in norms:
        assert n["layernorm_alone"] == 0 and n["block_change"] == pytest.approx(n["update_over_states"], rel=1e-4)
    # With no update the original block's whole change is its LayerNorm's.
    for block in captioner.model.fusion:
        block.residual_scale, block.norm = 0.0, "post"
    silent = fusion_update_norms(captioner, lyrics, music)
    for n in silent:
        assert n["update_over_states"] == 0 and n["layernorm_alone"] > 0
        assert n["block_change"] == pytest.approx(n["layernorm_alone"], abs=1e-4)


def test_swap_diagnostic_on_a_trained_model(tiny_models, tmp_path):
    report = swap_diagnostic(tiny_models["music"], split="train", out_dir=tmp_path, seed=1)
    assert report["uses_music"] and report["songs"] >= 6
    for row in report["attributes"].values():
        if row["pairs"]:
            assert row["follows_music"] + row["follows_lyrics"] + row["neither"] == pytest.approx(1.0)
    assert {"instrument", "tempo", "theme"} <= set(report["attributes"])
    lines = (tmp_path / "swap.jsonl").read_text().splitlines()
    assert len(lines) == report["songs"] and {"own", "swapped", "music_of"} <= set(json.loads(lines[0]))
    assert json.loads((tmp_path / "swap.json").read_text())["attributes"] == report["attributes"]
    lyrics_only = swap_diagnostic(tiny_models["lyrics"], split="train", out_dir=tmp_path / "bart", seed=1)
    assert lyrics_only["fusion"] == [] and not lyrics_only["uses_music"]
    swapped = [json.loads(line) for line in (tmp_path / "bart" / "swap.jsonl").read_text().splitlines()]
    assert all(s["own"] == s["swapped"] for s in swapped)  # music changes nothing for a lyrics-only model
