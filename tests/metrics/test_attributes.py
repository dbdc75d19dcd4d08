import json

import pytest

from alcap.metrics.attributes import AttributeWords, AttributeWordsError, attribute_accuracy

WORDS = AttributeWords({
    "instrument": {"piano": ["piano"], "guitar": ["guitar"]},
    "drums": {"no": ["no drums"], "yes": ["drum"]},
    "theme": {"love": ["in love"], "loss": ["grief"], "instrumental": []},
})


def item(**attributes):
    return {"attributes": attributes}


def test_first_listed_value_wins_and_unworded_values_state_nothing():
    assert WORDS.stated("Piano, no drums, about being in love") == {"instrument": "piano", "drums": "no", "theme": "love"}
    assert WORDS.stated("a guitar over a drum beat") == {"instrument": "guitar", "drums": "yes", "theme": None}
    assert WORDS.is_right("theme", None, "instrumental") and not WORDS.is_right("theme", "love", "instrumental")


def test_accuracy_counts_only_listed_values_and_reports_invented_themes():
    items = [item(instrument="piano", theme="love"), item(instrument="guitar", theme="instrumental"),
             item(instrument="flute", theme="instrumental"), item(instrument="piano", theme="loss")]
    captions = ["piano, in love", "guitar, grief", "flute, no theme", "guitar and grief"]
    scored = attribute_accuracy(items, captions, WORDS)
    # flute is not in the file: left out, not counted wrong (3 songs scored for instrument)
    assert scored["accuracy"] == {"instrument": pytest.approx(2 / 3), "theme": pytest.approx(3 / 4)}
    assert scored["invented"] == {"theme": 0.5}  # one of the two instrumentals was given a theme
    # chance: always stating the most common value (piano 2 of 3; instrumental, i.e. no theme, 2 of 4)
    assert scored["chance"] == {"instrument": pytest.approx(2 / 3), "theme": pytest.approx(2 / 4)}
    assert "drums" not in scored["accuracy"]  # no song has a drums column
    assert attribute_accuracy(items, captions, None) == {}  # no words: not scored, never false zeros


def test_words_beside_the_manifest_or_given(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    assert AttributeWords.for_manifest(manifest) is None
    (tmp_path / "attributes.json").write_text(json.dumps({"mode": {"major": ["Major"]}}))
    assert AttributeWords.for_manifest(manifest).words == {"mode": {"major": ["major"]}}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mode": ["major"]}))
    with pytest.raises(AttributeWordsError, match="expected"):
        AttributeWords.for_manifest(manifest, other)
