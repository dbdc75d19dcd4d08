"""Offline WordNet 3.0 for NLTK's METEOR.

NLTK's downloader needs the internet. Debian's `wordnet-base` and `wordnet-sense-index`
install the same WordNet 3.0 database; NLTK reads it once the files are copied (not
symlinked: NLTK's path guard rejects links leaving its root) into
`<sys.prefix>/nltk_data/corpora/wordnet/` together with a `lexnames` file.
`python -m alcap.metrics.wordnet` does that; `make` runs it.
"""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/wordnet")
# The 45 lexicographer files of WordNet 3.0, in file-number order (Debian's lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
ADVICE = ("install Debian's WordNet (apt-get install wordnet-base wordnet-sense-index) and run "
          "`python -m alcap.metrics.wordnet`, or run nltk.download('wordnet') where the internet is reachable")


@functools.lru_cache(maxsize=1)
def wordnet_reader():
    """NLTK's WordNet reader for METEOR, loaded once per process.

    It is NLTK's own WordNetCorpusReader on the same files as `nltk.corpus.wordnet`, minus one
    step: on loading, NLTK maps WordNet 3.0 onto the loaded version for its multilingual (OMW)
    functions, and because it compares the version "3.0" with the corpus name "wordnet" it
    builds that mapping of 3.0 onto itself, reading index.sense twice: 6.6 s of an 11 s load,
    paid by every process that scores METEOR. METEOR uses only synsets and lemmas.
    """
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None if self.get_version() == "3.0" else super().map_wn(version)

    try:  # where nltk.download puts it (a zip), then an unpacked copy (python -m alcap.metrics.wordnet)
        root = nltk.data.find("corpora/wordnet.zip/wordnet/")
    except LookupError:
        root = nltk.data.find("corpora/wordnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed here
        return WordNet30(root, None)


def wordnet_status() -> tuple[bool, str]:
    """(available, reason) without downloading anything."""
    try:
        wordnet = wordnet_reader()
        if not wordnet.synsets("music"):
            return False, "NLTK's WordNet has no synsets for 'music'"
        return True, f"WordNet {wordnet.get_version()}"
    except LookupError:
        return False, f"NLTK cannot find WordNet; {ADVICE}"
    except Exception as exc:  # noqa: BLE001 - any broken install is reported, not raised
        return False, f"WordNet failed to load ({type(exc).__name__}: {exc}); {ADVICE}"


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def install_from_debian(source: Path = DEBIAN_DIR, nltk_root: Path | None = None) -> Path:
    """Copy Debian's WordNet files where NLTK looks; returns the corpus directory."""
    if not (source / "data.noun").is_file():
        raise FileNotFoundError(f"{source}: no WordNet database here; {ADVICE}")
    target = (nltk_root or Path(sys.prefix) / "nltk_data") / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copyfile(path, target / path.name)  # a copy, never a link
    (target / "lexnames").write_text(lexnames_text(), encoding="ascii")
    return target


def wordnet_required() -> bool:
    """In CI (CI=true) a missing WordNet is a failure, not a METEOR reported as unavailable:
    otherwise every METEOR check could vanish without a word."""
    import os

    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def setup() -> int:
    ok, reason = wordnet_status()
    if not ok and (DEBIAN_DIR / "data.noun").is_file():
        target = install_from_debian()
        ok, reason = wordnet_status()  # NLTK's lazy loader retries after a failed lookup
        print(f"METEOR: copied Debian's WordNet to {target}: {reason}")
    if ok:
        print(f"METEOR: {reason} is available")
        return 0
    if wordnet_required():
        print(f"error: CI needs WordNet for METEOR and it is not usable: {reason}", file=sys.stderr)
        return 1
    print(f"note: METEOR will be reported as unavailable: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(setup())
