"""alcap: music captioning from audio and lyrics (ALCAP: BART + cross-modal fusion + contrastive alignment).

The public API, imported lazily so that `import alcap` stays light:

    Captioner, CaptionResult, GenerationConfig    caption songs with a trained model
    Library                                       caption a catalogue, search it by description
    AlcapModel, AlcapConfig, info_nce, load_config    the model, its loss, run configs
    EmbeddingStore, EmbeddingWriter, embed_songs  precomputed music embeddings
    MusicExtractor, CNNSAExtractor, MusicnnExtractor, CNNSA, load_cnnsa, MelFrontEnd, MSD_TOP50_TAGS
                                                  music encoders
    load_audio, load_waveform, Excerpt, Clip, AudioError    audio decoding
    read_manifest, validate_manifest, make_demo_corpus      data
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "EmbeddingStore": "alcap.data.store",
    "EmbeddingWriter": "alcap.data.store",
    "Excerpt": "alcap.audio.decode",
    "Clip": "alcap.audio.decode",
    "AudioError": "alcap.audio.decode",
    "load_audio": "alcap.audio.decode",
    "load_waveform": "alcap.audio.decode",
    "MelFrontEnd": "alcap.audio.frontend",
    "CNNSA": "alcap.audio.cnnsa",
    "load_cnnsa": "alcap.audio.cnnsa",
    "CNNSAExtractor": "alcap.audio.extractor",
    "MusicExtractor": "alcap.audio.extractor",
    "MusicnnExtractor": "alcap.audio.extractor",
    "MSD_TOP50_TAGS": "alcap.audio.tags",
    "read_manifest": "alcap.data.manifest",
    "validate_manifest": "alcap.data.validate",
    "embed_songs": "alcap.data.embed",
    "make_demo_corpus": "alcap.data.demo",
    "info_nce": "alcap.model.alignment",
    "AlcapModel": "alcap.model.captioner",
    "AlcapConfig": "alcap.model.captioner",
    "Captioner": "alcap.inference",
    "CaptionResult": "alcap.inference",
    "GenerationConfig": "alcap.config",
    "Library": "alcap.library",
    "load_config": "alcap.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alcap' has no attribute {name!r}")
