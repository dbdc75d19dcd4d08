"""The embedded demo corpus: synthetic songs whose captions need both the audio and the lyrics.

Each song has audio attributes: tempo, lead instrument (timbre), major/minor mode, energy
(loudness and density) and drums, and a lyric theme. Every caption states the instrument,
tempo, mode and theme, and some also state energy and drums, in varied human-like phrasings.
A lyrics-only model can get the theme right but not the audio facts; an audio-only model
the reverse.

As in real songs, music and lyrics are loosely aligned (`alignment`, 0.6 by default, fixed
before any result was seen): each theme has a preferred musical character (`THEME_CHARACTER`),
and each of a song's mode, tempo and energy takes its theme's preferred value with probability
`alignment`, otherwise the uniform draw of the independent corpus (`alignment=0`, corpus
version 2's songs exactly). A share of songs (`instrumental_share`) are instrumentals: no
lyrics, captions about the music alone. Everything is deterministic from the seed, and songs
are synthesised in parallel processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..metrics.attributes import ATTRIBUTE_WORDS_FILE
from .manifest import write_manifest

TEMPOS = {"slow": (62, 78), "moderate": (92, 112), "fast": (132, 158)}
INSTRUMENTS = ("piano", "guitar", "strings", "synth", "flute")
MODES = ("major", "minor")
ENERGIES = ("gentle", "energetic")
THEMES = ("love", "heartbreak", "nature", "city", "home", "hope", "freedom", "loss")
INSTRUMENTAL = "instrumental"  # the theme column of a song without lyrics
# Each theme's preferred musical character; nature and city have none.
THEME_CHARACTER = {
    "heartbreak": {"mode": "minor", "tempo": "slow"}, "loss": {"mode": "minor", "tempo": "slow"},
    "love": {"mode": "major", "tempo": "moderate", "energy": "gentle"},
    "home": {"mode": "major", "tempo": "moderate", "energy": "gentle"},
    "hope": {"mode": "major", "tempo": "fast", "energy": "energetic"},
    "freedom": {"mode": "major", "tempo": "fast", "energy": "energetic"},
}
DEFAULT_ALIGNMENT, DEFAULT_INSTRUMENTAL_SHARE = 0.6, 0.15

# Words that identify each attribute value in a caption, used to score captions later.
# Checked in order; negated drum phrases come first so "no drums" is not read as drums.
ATTRIBUTE_KEYWORDS = {
    "instrument": {"piano": ["piano"], "guitar": ["guitar"], "strings": ["string"], "synth": ["synth"],
                   "flute": ["flute"]},
    "tempo": {"slow": ["slow"], "moderate": ["mid-tempo", "moderate"], "fast": ["fast", "quick"]},
    "mode": {"major": ["major"], "minor": ["minor"]},
    "energy": {"gentle": ["gentle", "calm", "quiet"], "energetic": ["energetic", "driving", "powerful"]},
    "drums": {"no": ["no drums", "without drums", "no percussion", "drumless"], "yes": ["drum", "percussion"]},
}

FORMATS = (  # (extension, soundfile format, subtypes, share of songs)
    ("wav", "WAV", ("PCM_16", "PCM_24", "FLOAT"), 0.30),
    ("flac", "FLAC", ("PCM_16", "PCM_24"), 0.25),
    ("ogg", "OGG", ("VORBIS",), 0.20),
    ("mp3", "MP3", ("MPEG_LAYER_III",), 0.25),
)
SAMPLE_RATES = ((16000, 0.2), (22050, 0.4), (32000, 0.2), (44100, 0.2))
SPLIT_SHARES = (("train", 0.70), ("val", 0.15), ("test", 0.15))
CORPUS_VERSION = 3  # bump when synthesis or captions change, so old corpora are regenerated


# ----------------------------------------------------------------------------- lyrics

_TIMES = ["tonight", "this morning", "at midnight", "in the evening", "at dawn", "all summer", "every winter"]
_LYRIC_LINES = {
    "love": [
        "Your hand in mine {time}, the whole world fades away", "I fell for you the moment that you smiled",
        "Every heartbeat whispers out your name", "Hold me close, I'm never letting go",
        "You're the reason that I wake up singing", "Kiss me underneath the summer stars",
        "My heart found a home inside your arms", "I'd cross an ocean just to see your face",
        "Darling, you and I were meant to be", "Love is written all across the sky",
        "Every song I write is about you", "Stay with me {time} and forever after",
    ],
    "heartbreak": [
        "You packed your bags and left without a word", "Now the bed is cold where you used to lie",
        "I keep your letters but I can't read them", "Broken pieces of a promise on the floor",
        "You said forever, but forever ended {time}", "I'm learning how to live without your love",
        "Tears keep falling like the autumn rain", "Why did you walk away from us",
        "The ring is in a drawer I never open", "Another lonely night without your call",
        "I gave you everything, you gave me goodbye", "My heart is shattered glass upon the street",
    ],
    "nature": [
        "The river sings its song beneath the pines", "Mountains rising in the morning mist",
        "Wildflowers bloom across the valley floor", "The wind is talking softly to the trees",
        "I lie in meadows watching eagles fly", "Rain is falling on the forest leaves",
        "The ocean waves roll in {time}", "Snow is resting on the silent hills",
        "Sunlight breaking through the green canopy", "Seasons turning like an ancient wheel",
        "Birds are calling from the willow branch", "The moon is rising over silver lakes",
    ],
    "city": [
        "Neon signs are flashing on the avenue", "Taxis racing through the downtown streets",
        "The subway rumbles underneath my feet", "Skyscraper windows glowing {time}",
        "We dance in crowded clubs until the sunrise", "Sirens singing in the concrete jungle",
        "Streetlights painting shadows on the walls", "A million strangers walking through the square",
        "The city never sleeps and neither do I", "Rooftop parties high above the traffic",
        "Jazz is spilling from a basement bar", "Midnight trains are leaving from the station",
    ],
    "home": [
        "I miss the porch where grandma used to sit", "The old house standing at the end of the lane",
        "Mama's cooking drifting through the kitchen", "I'm going back to the town where I was raised",
        "Childhood summers in my father's fields", "The creaking stairs still know my name",
        "Photographs of family on the wall", "I can see my hometown {time}",
        "The church bell ringing like it used to", "Old friends waiting at the county fair",
        "Take me back to where I first belonged", "The road that leads me home is calling",
    ],
    "hope": [
        "Tomorrow is another chance to rise", "I'll get back up no matter how I fall",
        "There's a light that's waiting past the storm", "Keep on climbing, don't you ever quit",
        "Better days are coming, I believe", "From the ashes I will rise again",
        "Every scar is proof that I survived", "The sun will break the clouds {time}",
        "I'm stronger now than I have ever been", "Hold on, the night is almost over",
        "Dreams still burning deep inside my chest", "We will overcome, we will prevail",
    ],
    "freedom": [
        "Open highway stretching out before me", "I left the job and never looked behind",
        "No chains can hold me, I was born to roam", "Windows down and wind inside my hair",
        "Chasing sunsets to the western coast", "I'm breaking free from all the walls you built",
        "My only map is the horizon line", "Hitchhiking through the desert {time}",
        "Nobody tells me where I have to go", "Spread my wings and fly above the rules",
        "A backpack and a dream is all I need", "The road is long and I am finally free",
    ],
    "loss": [
        "Your empty chair still sits beside the fire", "I laid white roses on your grave today",
        "I still can hear your laughter in the hall", "Heaven took you far too soon",
        "We said goodbye {time} in the hospital", "I wear your coat to feel you close again",
        "The funeral bells are ringing through the town", "I talk to you though you are gone",
        "Grief is heavy like a winter coat", "Your memory is all I have left",
        "I light a candle every year for you", "Rest in peace, my dearest friend",
    ],
}

# ----------------------------------------------------------------------------- captions

_THEME_ABOUT = {
    "love": ["falling in love", "being deeply in love with someone", "a new romance", "the joy of loving someone"],
    "heartbreak": ["a painful breakup", "heartbreak after a relationship ends", "being left by someone they loved",
                   "trying to get over a broken heart"],
    "nature": ["the beauty of nature", "mountains, rivers and the changing seasons", "finding peace in the natural world",
               "wandering through forests and meadows"],
    "city": ["nightlife in the big city", "wandering city streets at night", "the restless buzz of the city after hours",
             "urban life among crowds and neon"],
    "home": ["nostalgia for home", "missing the place they grew up", "returning to their hometown",
             "memories of family and childhood"],
    "hope": ["hope and resilience", "getting back up after hard times", "believing that better days will come",
             "never giving up"],
    "freedom": ["freedom and the open road", "leaving everything behind to travel", "breaking free from a dull life",
                "the urge to roam without rules"],
    "loss": ["grief over losing someone", "mourning a loved one who passed away", "coping with the death of a friend",
             "the pain of losing someone close"],
}
_THEME_READING = {
    "love": ["the singer is head over heels for someone", "it's a love letter to a partner"],
    "heartbreak": ["the singer is trying to move on after being hurt", "it's about a relationship that fell apart"],
    "nature": ["the singer finds peace among trees and rivers", "it's an ode to the outdoors"],
    "city": ["the singer is out in the city all night", "it captures life in a big city"],
    "home": ["the singer longs to go back home", "it's about the pull of the place you come from"],
    "hope": ["the singer refuses to give up", "it's an anthem about resilience"],
    "freedom": ["the singer wants to leave everything behind", "it's about escaping and hitting the road"],
    "loss": ["the singer is mourning someone they lost", "it's about grief and remembering the dead"],
}
_INSTRUMENT = {  # noun phrases: "led by ...", "with ..."
    "piano": ["piano", "a warm piano", "solo piano chords", "the piano"],
    "guitar": ["acoustic guitar", "a plucked guitar", "fingerpicked guitar", "the guitar"],
    "strings": ["strings", "a lush string section", "sweeping strings", "the strings"],
    "synth": ["synth", "a buzzy synth lead", "retro synths", "the synthesizer"],
    "flute": ["flute", "an airy flute", "a breathy flute melody", "the flute"],
}
_INSTRUMENT_BARE = {  # after an adjective: "slow ..."
    "piano": ["piano", "warm piano", "piano chords"], "guitar": ["acoustic guitar", "plucked guitar", "fingerpicked guitar"],
    "strings": ["strings", "lush strings", "sweeping strings"], "synth": ["synth", "buzzy synth", "retro synths"],
    "flute": ["flute", "airy flute", "breathy flute"],
}
_TEMPO = {"slow": ["slow", "slow, unhurried", "slow-paced"], "moderate": ["mid-tempo", "moderately paced", "mid-tempo, steady"],
          "fast": ["fast", "fast, upbeat", "quick"]}
_MODE_KEY = {"major": ["a major key", "a bright major key"], "minor": ["a minor key", "a dark minor key"]}
_MODE_ADJ = {"major": ["major-key", "bright major-key"], "minor": ["minor-key", "dark minor-key"]}
_ENERGY = {"gentle": ["gentle", "calm and quiet", "gentle, restrained"], "energetic": ["energetic", "loud and driving", "powerful"]}
_DRUMS = {True: [" over a steady drum beat", " backed by drums", ", with drums keeping time"],
          False: [", with no drums", ", without drums", " and no percussion"]}

_TEMPLATES = (
    "A {tempo} {mode_adj} song led by {instrument}{drums}. The lyrics are about {about}.",
    "This is a song about {about}. Musically it's {energy} and {tempo}, built on {instrument} in {mode_key}.",
    "I think {reading}. Musically there's {instrument} playing a {tempo} melody in {mode_key}{drums}.",
    "The song is about {about}. It sounds {energy}: {tempo}, {mode_adj}, with {instrument}{drums}.",
    "To me {reading}. It's a {tempo} {instrument_bare} piece in {mode_key}.",
    "{about_cap} is the theme here, set to {tempo} {instrument_bare} in {mode_key}{drums}.",
    "A {energy}, {tempo} track with {instrument} in {mode_key}; lyrically it deals with {about}.",
    "Over {tempo} {instrument_bare} in {mode_key}, the lyrics describe {about}. {reading_cap}.",
)
_INSTRUMENTAL_TEMPLATES = (  # no lyrics: the music alone
    "An instrumental, {tempo} {mode_adj} piece led by {instrument}{drums}.",
    "A {energy}, {tempo} instrumental with {instrument} in {mode_key}; there are no vocals.",
    "No vocals here: {tempo} {instrument_bare} in {mode_key}{drums}, {energy} throughout.",
    "This instrumental track is {energy} and {tempo}, built on {instrument} in {mode_key}.",
    "A {tempo} {instrument_bare} instrumental in {mode_key}{drums}.",
)


@dataclass(frozen=True)
class SongSpec:
    index: int
    song_id: str
    seed: int
    tempo: str
    bpm: int
    instrument: str
    mode: str
    root_midi: int
    energy: str
    drums: bool
    theme: str
    seconds: float
    sample_rate: int
    channels: int
    ext: str
    sf_format: str
    subtype: str
    split: str


def make_lyrics(theme: str, rng: np.random.Generator) -> str:
    lines = list(_LYRIC_LINES[theme])
    order = rng.permutation(len(lines))
    pick = [lines[i].replace("{time}", _TIMES[rng.integers(len(_TIMES))]) for i in order[:10]]
    verse1, chorus, verse2 = pick[:4], pick[4:6], pick[6:10]
    return "\n".join(verse1 + [""] + chorus + [""] + verse2 + [""] + chorus)


def templates_for(spec: SongSpec) -> tuple[str, ...]:
    return _INSTRUMENTAL_TEMPLATES if spec.theme == INSTRUMENTAL else _TEMPLATES


def make_caption(spec: SongSpec, rng: np.random.Generator, template: int | None = None) -> str:
    def choice(options):
        return options[rng.integers(len(options))]

    instrument = choice(_INSTRUMENT[spec.instrument])
    sung = spec.theme != INSTRUMENTAL
    about = choice(_THEME_ABOUT[spec.theme]) if sung else ""
    reading = choice(_THEME_READING[spec.theme]) if sung else ""
    fields = {
        "tempo": choice(_TEMPO[spec.tempo]), "mode_adj": choice(_MODE_ADJ[spec.mode]), "mode_key": choice(_MODE_KEY[spec.mode]),
        "instrument": instrument, "instrument_bare": choice(_INSTRUMENT_BARE[spec.instrument]),
        "energy": choice(_ENERGY[spec.energy]), "drums": choice(_DRUMS[spec.drums]) if rng.random() < 0.6 else "",
        "about": about, "about_cap": about[:1].upper() + about[1:], "reading": reading,
        "reading_cap": reading[:1].upper() + reading[1:],
    }
    templates = templates_for(spec)
    text = templates[template if template is not None else rng.integers(len(templates))].format(**fields)
    return text.replace("  ", " ")


# ----------------------------------------------------------------------------- audio

_MAJOR, _MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = {"major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4)), "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4))}


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12)


def _tone(freq: float, dur: float, instrument: str, sr: int, rng: np.random.Generator, bright: float) -> np.ndarray:
    """One note with the instrument's harmonic profile and envelope."""
    n = max(1, int(dur * sr))
    t = np.arange(n, dtype=np.float32) / sr
    vibrato = {"strings": (5.5, 0.004), "flute": (4.5, 0.003)}.get(instrument)
    inst_freq = freq * (1 + vibrato[1] * np.sin(2 * np.pi * vibrato[0] * t)) if vibrato else np.full(n, freq, np.float32)
    phase = (2 * np.pi / sr) * np.cumsum(inst_freq, dtype=np.float64)
    if instrument == "piano":
        ks, amps, decay, attack = range(1, 9), lambda k: k ** -1.3, lambda k: 1.2 + 0.5 * k, 0.004
    elif instrument == "guitar":
        ks, amps, decay, attack = range(1, 11), lambda k: abs(np.sin(np.pi * k * 0.22)) / k, lambda k: 2.0 + 1.1 * k, 0.002
    elif instrument == "strings":
        ks, amps, decay, attack = range(1, 13), lambda k: 1.0 / k, lambda k: 0.0, 0.22
    elif instrument == "synth":
        ks, amps, decay, attack = range(1, 16, 2), lambda k: 1.0 / k, lambda k: 0.0, 0.01
    else:  # flute
        ks, amps, decay, attack = range(1, 5), lambda k: (1.0, 0.35, 0.12, 0.05)[k - 1], lambda k: 0.0, 0.07
    out = np.zeros(n, dtype=np.float32)
    for k in ks:
        if k * freq >= min(sr / 2 - 500, 9000):
            break
        amp = amps(k) * (bright ** (k - 1))
        env = np.exp(-decay(k) * t) if decay(k) else 1.0
        out += (amp * env * np.sin(k * phase + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    if instrument == "flute":
        out += 0.015 * rng.standard_normal(n).astype(np.float32) * np.minimum(1.0, t / 0.05)
    env = np.minimum(1.0, t / attack)
    release = min(n, int(0.04 * sr))
    env[n - release:] *= np.linspace(1.0, 0.0, release, dtype=np.float32)
    return out * env


def _drum_hits(n: int, sr: int, beat: float, rng: np.random.Generator, energetic: bool) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    kick_t = np.arange(int(0.25 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 + 90 * np.exp(-kick_t * 30)) * kick_t) * np.exp(-kick_t * 14)
    snare_len, hat_len = int(0.18 * sr), int(0.05 * sr)
    step = beat / 2
    for i in range(int(n / sr / step)):
        start = int(i * step * sr)
        if i % 4 == 0:
            piece = kick
        elif i % 4 == 2:
            piece = rng.standard_normal(snare_len) * np.exp(-np.arange(snare_len) / sr * 22) * 0.5
        else:
            piece = rng.standard_normal(hat_len) * np.exp(-np.arange(hat_len) / sr * 90) * (0.3 if energetic else 0.18)
            piece = np.diff(piece, prepend=0.0)  # crude high-pass: hats hiss
        end = min(n, start + len(piece))
        out[start:end] += piece[: end - start].astype(np.float32)
    return out


def synthesize(spec: SongSpec) -> np.ndarray:
    """Render a song: (frames, channels) float32 in [-1, 1]."""
    rng = np.random.default_rng(spec.seed)
    sr, n = spec.sample_rate, int(spec.seconds * spec.sample_rate)
    beat = 60.0 / spec.bpm
    scale = _MAJOR if spec.mode == "major" else _MINOR
    energetic = spec.energy == "energetic"
    bright = 0.85 if energetic else 0.6
    progression = _PROGRESSIONS[spec.mode][rng.integers(3)]
    mix = np.zeros(n + sr, dtype=np.float32)

    def place(start_s: float, samples: np.ndarray, gain: float) -> None:
        start = int(start_s * sr)
        end = min(len(mix), start + len(samples))
        if start < end:
            mix[start:end] += gain * samples[: end - start]

    def degree_midi(degree: int, octave: int) -> int:
        return spec.root_midi + 12 * (octave + degree // 7) + scale[degree % 7]

    bar, t = 4 * beat, 0.0
    sustained = spec.instrument in ("strings", "synth", "flute")
    while t < spec.seconds:  # accompaniment: one chord per bar
        chord_root = progression[int(round(t / bar)) % 4]
        tones = [degree_midi(chord_root + d, 0) for d in (0, 2, 4)]
        if sustained:
            for m in tones:
                place(t, _tone(_midi_hz(m), bar, spec.instrument, sr, rng, bright), 0.22)
        else:  # arpeggios when gentle, chords on every beat when energetic
            for b in range(4):
                if energetic:
                    for m in tones:
                        place(t + b * beat, _tone(_midi_hz(m), beat * 0.95, spec.instrument, sr, rng, bright), 0.25)
                else:
                    m = tones[b % 3] if b < 3 else tones[1] + 12
                    place(t + b * beat, _tone(_midi_hz(m), beat * 1.8, spec.instrument, sr, rng, bright), 0.3)
        t += bar
    step = beat / 2 if energetic else beat  # melody: a random walk on the scale, one octave up
    degree, t = 7 + int(rng.integers(0, 5)), 0.0
    while t < spec.seconds:
        length = step * (2 if rng.random() < 0.25 else 1)
        if rng.random() > 0.12:
            place(t, _tone(_midi_hz(degree_midi(degree, 0)), length * 0.95, spec.instrument, sr, rng, bright), 0.45)
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 5, 13))
        t += length
    if spec.drums:
        mix[:n] += _drum_hits(n, sr, beat, rng, energetic) * (0.9 if energetic else 0.5)
    mix = mix[:n]
    peak = float(np.max(np.abs(mix))) or 1.0
    mix *= (0.9 if energetic else 0.18) / peak  # energy is also loudness: about 14 dB apart
    if spec.channels == 1:
        return mix[:, None]
    pan = 0.15 * rng.uniform(-1, 1)
    return np.stack([mix * (1 - pan), mix * (1 + pan)], axis=1) / (1 + abs(pan))


# ----------------------------------------------------------------------------- corpus


def _weighted(rng: np.random.Generator, options):
    weights = np.array([w for *_, w in options], dtype=float)
    return options[rng.choice(len(options), p=weights / weights.sum())]


def plan_corpus(n_songs: int, seed: int, min_seconds: float = 15.0, max_seconds: float = 30.0,
                alignment: float = DEFAULT_ALIGNMENT, instrumental_share: float = 0.0) -> list[SongSpec]:
    """Draw every song's attributes. The uniform draws come first, in the independent corpus's
    order; a second stream per song then decides which songs are instrumentals and which of
    their mode, tempo and energy follow the theme's preference, so `alignment=0` with no
    instrumentals gives exactly the independent corpus."""
    if not 0.0 <= alignment <= 1.0 or not 0.0 <= instrumental_share <= 1.0:
        raise ValueError(f"alignment ({alignment}) and instrumental share ({instrumental_share}) must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    split_of = {}
    order = rng.permutation(n_songs)
    bounds = np.cumsum([share for _, share in SPLIT_SHARES]) * n_songs
    for rank, i in enumerate(order):
        split_of[int(i)] = next(name for (name, _), b in zip(SPLIT_SHARES, bounds) if rank < round(b))
    specs = []
    for i in range(n_songs):
        r = np.random.default_rng([seed, i])
        tempo = ("slow", "moderate", "fast")[r.integers(3)]
        ext, fmt, subtypes, _ = _weighted(r, FORMATS)
        spec = SongSpec(
            index=i, song_id=f"demo{i:04d}", seed=int(r.integers(2**31)), tempo=tempo,
            bpm=int(r.integers(*TEMPOS[tempo])), instrument=INSTRUMENTS[r.integers(len(INSTRUMENTS))],
            mode=MODES[r.integers(2)], root_midi=int(r.integers(48, 60)), energy=ENERGIES[r.integers(2)],
            drums=bool(r.integers(2)), theme=THEMES[r.integers(len(THEMES))],
            seconds=round(float(r.uniform(min_seconds, max_seconds)), 2),
            sample_rate=int(_weighted(r, SAMPLE_RATES)[0]), channels=int(r.integers(1, 3)),
            ext=ext, sf_format=fmt, subtype=subtypes[r.integers(len(subtypes))], split=split_of[i],
        )
        specs.append(_align(spec, np.random.default_rng([seed, i, 2]), alignment, instrumental_share))
    return specs


def _align(spec: SongSpec, r: np.random.Generator, alignment: float, instrumental_share: float) -> SongSpec:
    """An instrumental (music drawn uniformly), or the song with each of its theme's preferred
    attributes taken with probability `alignment`. Draws are made whatever the outcome, so
    one song's draw never shifts another's."""
    instrumental = r.random() < instrumental_share
    follow = {attribute: r.random() < alignment for attribute in ("mode", "tempo", "energy")}
    bpm_position = r.random()  # where in its tempo's range a changed tempo's bpm lies
    if instrumental:
        return dataclasses.replace(spec, theme=INSTRUMENTAL)
    changes = {a: v for a, v in THEME_CHARACTER.get(spec.theme, {}).items() if follow[a]}
    if changes.get("tempo", spec.tempo) != spec.tempo:
        low, high = TEMPOS[changes["tempo"]]
        changes["bpm"] = low + int(bpm_position * (high - low))
    return dataclasses.replace(spec, **changes)


def _render(args: tuple[SongSpec, str]) -> str:
    spec, audio_dir = args
    path = Path(audio_dir) / f"{spec.song_id}.{spec.ext}"
    sf.write(str(path), synthesize(spec), spec.sample_rate, format=spec.sf_format, subtype=spec.subtype)
    return path.name


def make_demo_corpus(
    out_dir: str | Path,
    n_songs: int = 300,
    seed: int = 0,
    captions_per_song: int = 3,
    min_seconds: float = 15.0,
    max_seconds: float = 30.0,
    workers: int | None = None,
    progress: bool = True,
    alignment: float = DEFAULT_ALIGNMENT,
    instrumental_share: float | None = None,
) -> dict:
    """Write audio files, `manifest.jsonl` and `corpus.json` under `out_dir`; returns the summary.
    `instrumental_share` defaults to 15% for an aligned corpus and none for `alignment=0`
    (the independent corpus of version 2)."""
    from tqdm.auto import tqdm

    if instrumental_share is None:
        instrumental_share = DEFAULT_INSTRUMENTAL_SHARE if alignment > 0 else 0.0
    out_dir = Path(out_dir)
    audio_dir = out_dir / "audio"
    params = {"corpus_version": CORPUS_VERSION, "seed": seed, "songs": n_songs, "captions_per_song": captions_per_song,
              "min_seconds": min_seconds, "max_seconds": max_seconds, "alignment": alignment,
              "instrumental_share": instrumental_share}
    reused = _existing_corpus(out_dir, params)
    if reused is not None:
        return {**reused, "reused": True}
    audio_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    specs = plan_corpus(n_songs, seed, min_seconds, max_seconds, alignment, instrumental_share)
    workers = workers or min(len(specs), os.cpu_count() or 1)
    jobs = [(spec, str(audio_dir)) for spec in specs]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            names = list(tqdm(pool.map(_render, jobs, chunksize=4), total=len(jobs), desc="synthesising",
                              unit="song", disable=not progress))
    else:
        names = [_render(job) for job in tqdm(jobs, desc="synthesising", unit="song", disable=not progress)]

    records = []
    for spec, name in zip(specs, names):
        rng = np.random.default_rng([seed, spec.index, 1])
        lyrics = make_lyrics(spec.theme, rng) if spec.theme != INSTRUMENTAL else ""
        templates = rng.permutation(len(templates_for(spec)))[:captions_per_song]
        for template in templates:
            records.append({
                "song_id": spec.song_id, "audio": f"audio/{name}", "lyrics": lyrics,
                "caption": make_caption(spec, rng, int(template)), "split": spec.split,
                "tempo": spec.tempo, "bpm": spec.bpm, "instrument": spec.instrument, "mode": spec.mode,
                "energy": spec.energy, "drums": "yes" if spec.drums else "no", "theme": spec.theme,
            })
    write_manifest(out_dir / "manifest.jsonl", records)
    (out_dir / ATTRIBUTE_WORDS_FILE).write_text(json.dumps(attribute_words(), indent=1) + "\n", encoding="utf-8")
    summary = {
        **params, "rows": len(records),
        "seconds_of_audio": round(sum(s.seconds for s in specs), 1),
        "splits": {name: sum(1 for s in specs if s.split == name) for name, _ in SPLIT_SHARES},
        "formats": {ext: sum(1 for s in specs if s.ext == ext) for ext, *_ in FORMATS},
        "sample_rates": {str(r): sum(1 for s in specs if s.sample_rate == r) for r, _ in SAMPLE_RATES},
        "attributes": {
            "tempo": {v: sum(1 for s in specs if s.tempo == v) for v in TEMPOS},
            "instrument": {v: sum(1 for s in specs if s.instrument == v) for v in INSTRUMENTS},
            "mode": {v: sum(1 for s in specs if s.mode == v) for v in MODES},
            "energy": {v: sum(1 for s in specs if s.energy == v) for v in ENERGIES},
            "drums": {"yes": sum(s.drums for s in specs), "no": sum(not s.drums for s in specs)},
            "theme": {v: sum(1 for s in specs if s.theme == v) for v in (*THEMES, INSTRUMENTAL)},
        },
        "theme_character": THEME_CHARACTER if alignment > 0 else {},
        "preferred_character_share": _preferred_share(specs),
        "generation_seconds": round(time.perf_counter() - started, 1),
        "manifest": str(out_dir / "manifest.jsonl"),
    }
    (out_dir / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _preferred_share(specs: list[SongSpec]) -> dict[str, float | None]:
    """Per attribute, the share of songs with a preferring theme that have the preferred value
    (0.6 + 0.4 / k expected for k values, or 1 / k for an independent corpus)."""
    shares = {}
    for attribute in ("mode", "tempo", "energy"):
        hits = [getattr(s, attribute) == THEME_CHARACTER[s.theme][attribute] for s in specs
                if attribute in THEME_CHARACTER.get(s.theme, {})]
        shares[attribute] = round(sum(hits) / len(hits), 4) if hits else None
    return shares


def _existing_corpus(out_dir: Path, params: dict) -> dict | None:
    """The summary of a complete corpus made with the same parameters, or None."""
    try:
        summary = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if any(summary.get(k) != v for k, v in params.items()):
        return None
    manifest = out_dir / "manifest.jsonl"
    if not manifest.exists() or not (out_dir / ATTRIBUTE_WORDS_FILE).exists():
        return None
    audio = {json.loads(line)["audio"] for line in manifest.read_text(encoding="utf-8").splitlines() if line}
    if len(audio) != params["songs"] or not all((out_dir / a).is_file() for a in audio):
        return None
    return summary


def attribute_words() -> dict[str, dict[str, list[str]]]:
    """The demo's words for each attribute value, written beside its manifest as attributes.json
    (metrics/attributes.py): the keywords above and the theme phrases; an instrumental's theme
    has no words, so a caption is right for it only when it states no theme."""
    themes = {t: _THEME_ABOUT[t] + _THEME_READING[t] for t in THEMES}
    return {**ATTRIBUTE_KEYWORDS, "theme": {**themes, INSTRUMENTAL: []}}
