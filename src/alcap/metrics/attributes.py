"""Which attribute values a caption states, by the words a corpus itself uses for them.

A corpus whose manifest has attribute columns (instrument, tempo, theme, ...) can say which
words state each value in `attributes.json` beside its manifest (the demo corpus writes one),
or in any file given with `data.attribute_words` / `--attributes`:

    {"instrument": {"piano": ["piano"], "guitar": ["guitar"]},
     "drums": {"no": ["no drums", "without drums"], "yes": ["drum"]},
     "theme": {"love": ["falling in love"], "instrumental": []}}

Values are tried in file order and the first whose phrase occurs in the lowercased caption is
the one stated (so "no drums" can come before "drum"). A value with no words is one that
should state nothing: a caption is right for it when it states none of the attribute's values
(an instrumental's lyric theme). Without such a file attributes are not scored: guessing
words from column names would report false zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ATTRIBUTE_WORDS_FILE = "attributes.json"


class AttributeWordsError(ValueError):
    """An attribute-words file that cannot be read or has the wrong shape."""


@dataclass
class AttributeWords:
    words: dict[str, dict[str, list[str]]]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "AttributeWords":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AttributeWordsError(f"{path}: cannot read the attribute words ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise AttributeWordsError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or not all(
                isinstance(values, dict) and all(isinstance(w, list) and all(isinstance(x, str) for x in w)
                                                 for w in values.values()) for values in data.values()):
            raise AttributeWordsError(f'{path}: expected {{"attribute": {{"value": ["phrase", ...]}}}}')
        return cls({a: {v: [w.lower() for w in ws] for v, ws in values.items()} for a, values in data.items()},
                   str(path))

    @classmethod
    def for_manifest(cls, manifest: str | Path, explicit: str | Path | None = None) -> "AttributeWords | None":
        """`explicit`, else `attributes.json` beside the manifest, else None (not scored)."""
        if explicit:
            return cls.load(explicit)
        beside = Path(manifest).parent / ATTRIBUTE_WORDS_FILE
        return cls.load(beside) if beside.is_file() else None

    def stated(self, caption: str) -> dict[str, str | None]:
        """Each attribute's value as the caption states it (None: it states none)."""
        text = caption.lower()
        return {attribute: next((v for v, words in values.items() if any(w in text for w in words)), None)
                for attribute, values in self.words.items()}

    def is_right(self, attribute: str, stated: str | None, true: str) -> bool:
        """`true` must be one of the file's values for `attribute`."""
        return stated is None if not self.words[attribute][true] else stated == true

    def scored(self, attributes: dict[str, str]) -> list[str]:
        """The attributes of a song that this file can score."""
        return [a for a in self.words if a in attributes]


def attribute_accuracy(items: list[dict], predictions: list[str], words: AttributeWords | None) -> dict:
    """{"accuracy": {attribute: share right}, "chance": {attribute: share right of a caption that
    always states the split's most common value}, "invented": {attribute: share of songs whose
    value has no words (instrumentals) where a value was stated anyway}} or {} when not scored."""
    if words is None or not items:
        return {}
    accuracy, invented, chance = {}, {}, {}
    for attribute in words.words:
        # Songs whose value the file does not list are left out, not counted wrong.
        pairs = [(words.stated(p)[attribute], it["attributes"][attribute]) for it, p in zip(items, predictions)
                 if it["attributes"].get(attribute) in words.words[attribute]]
        if not pairs:
            continue
        accuracy[attribute] = sum(words.is_right(attribute, s, t) for s, t in pairs) / len(pairs)
        truths = [t for _, t in pairs]
        chance[attribute] = max(truths.count(v) for v in set(truths)) / len(truths)
        silent = [s for s, t in pairs if not words.words[attribute][t]]
        if silent:
            invented[attribute] = sum(s is not None for s in silent) / len(silent)
    out = {"accuracy": accuracy, "chance": chance} if accuracy else {}
    if invented:
        out["invented"] = invented
    return out
