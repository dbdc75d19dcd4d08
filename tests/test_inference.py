from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alcap.audio.decode import Excerpt
from alcap.config import GenerationConfig, RunConfig
from alcap.inference import Captioner
from alcap.model.backbone import load_backbone

LYRICS = ["one two", "a much longer line of lyrics about the sea and the city at night",
          "", "three four five six", "the longest line of all, about home and hope and the road and the rain"]


class EchoModel(torch.nn.Module):
    """Captions = the lyrics ids, so a mix-up of rows shows; records what each batch held."""

    config = SimpleNamespace(use_music=True)

    def __init__(self):
        super().__init__()
        self.batches = []

    def generate(self, input_ids, attention_mask, music=None, music_mask=None, **kwargs):
        self.batches.append((attention_mask.sum(1).tolist(), music[:, 0, 0].long().tolist()))
        return input_ids


def test_batches_hold_similar_lengths_and_captions_keep_their_order():
    _, tokenizer = load_backbone("tiny", LYRICS * 4, vocab_size=300)
    model = EchoModel()
    captioner = Captioner(model, tokenizer, None, Excerpt(), RunConfig(), GenerationConfig(batch_size=2))
    music = [np.full((3, 256), i, dtype=np.float16) for i in range(len(LYRICS))]  # song i's music is all i

    captions = captioner.caption_embeddings(LYRICS, music)

    assert captions == [text.strip() for text in LYRICS]
    lengths = [len(ids) for ids in tokenizer(LYRICS)["input_ids"]]
    assert [len(rows) for rows, _ in model.batches] == [2, 2, 1]
    seen = [length for rows, _ in model.batches for length in rows]
    assert seen == sorted(lengths, reverse=True)  # longest first, so each batch pads little
    for rows, songs in model.batches:  # each row's music travelled with its lyrics
        assert rows == [lengths[i] for i in songs]


def test_generation_autocasts_only_where_asked_and_on_a_gpu():
    generation = GenerationConfig(mixed_precision="bf16")
    assert generation.autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert generation.autocast_dtype(torch.device("cpu")) is None  # slower than float32 on most CPUs
    assert GenerationConfig(mixed_precision="fp16").autocast_dtype(torch.device("cuda:1")) is torch.float16
    assert GenerationConfig().autocast_dtype(torch.device("cuda")) is None
    with pytest.raises(ValueError, match="generation.mixed_precision must be no, bf16 or fp16, not 'half'"):
        GenerationConfig(mixed_precision="half").autocast_dtype(torch.device("cuda"))
    changed = generation.with_overrides(num_beams=None, batch_size=64)  # None: keep the configured value
    assert (changed.num_beams, changed.batch_size, changed.mixed_precision) == (4, 64, "bf16")
    assert generation.batch_size == 16  # a copy: the run's own config is untouched

    class AutocastSpy(EchoModel):
        def generate(self, input_ids, attention_mask, **kwargs):
            self.batches.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return input_ids

    _, tokenizer = load_backbone("tiny", LYRICS * 4, vocab_size=300)
    music = [np.zeros((3, 256), dtype=np.float16)] * 2
    for pretend, expected in ((None, False), (torch.bfloat16, True)):
        model = AutocastSpy()
        captioner = Captioner(model, tokenizer, None, Excerpt(), RunConfig(), GenerationConfig(mixed_precision="bf16"))
        captioner.generation.autocast_dtype = lambda device, dtype=pretend: dtype  # as it answers on a GPU
        captioner.caption_embeddings(LYRICS[:2], music)
        assert model.batches == [(expected, torch.bfloat16)]


def test_one_bad_file_costs_only_itself_and_lyrics_only_models_still_check_files(tmp_path):
    from helpers import tone, write_audio

    from alcap.audio.decode import AudioError

    class LyricsEcho(EchoModel):
        config = SimpleNamespace(use_music=False)

        def generate(self, input_ids, attention_mask, **kwargs):
            self.batches.append(attention_mask.sum(1).tolist())
            return input_ids

    _, tokenizer = load_backbone("tiny", LYRICS * 4, vocab_size=300)
    model = LyricsEcho()
    captioner = Captioner(model, tokenizer, None, Excerpt(seconds=2.0), RunConfig(), GenerationConfig(batch_size=2))
    good = [write_audio(tmp_path / f"{i}.wav", tone(2.0, 16000), 16000) for i in range(3)]
    files = [good[0], tmp_path / "missing.wav", good[1], good[2]]
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        captioner.caption_batch(files, LYRICS[:4])
    assert model.batches == []  # raised before anything was generated

    results = captioner.caption_batch(files, LYRICS[:4], errors="skip")
    assert [(r.source, r.ok) for r in results] == [(str(f), f != files[1]) for f in files]
    assert results[1].error == "file not found" and results[1].caption is None
    assert [r.caption for r in results if r.ok] == [LYRICS[i].strip() for i in (0, 2, 3)]
    assert captioner.caption(None, LYRICS[0]) == LYRICS[0]  # no audio at all is fine for a lyrics-only model


def test_a_musicnn_model_captions_new_audio_with_the_encoder_it_was_trained_on(tiny_corpus, tmp_path):
    """Embed with musicnn-msd, train: the model's music dimension is the store's (753), best/ carries
    the musicnn weights and records which epoch it was selected at, and alcap caption hears a new
    file through the same encoder (the store's identity) without the store."""
    import json

    from alcap.audio.extractor import MusicnnExtractor
    from alcap.config import load_config
    from alcap.data.embed import embed_songs
    from alcap.data.manifest import read_manifest
    from alcap.data.store import EmbeddingStore
    from alcap.train.loop import train

    manifest = tiny_corpus / "corpus" / "manifest.jsonl"
    extractor = MusicnnExtractor.from_package("musicnn-msd", device="cpu")
    embed_songs(read_manifest(manifest).songs(), extractor, tmp_path / "store", excerpt=Excerpt(seconds=2.0),
                workers=0, progress=False)
    store = EmbeddingStore.open(tmp_path / "store")
    assert store.dim == 753 and store.meta["extractor"]["name"] == "musicnn-msd"
    config = load_config(None, [f"data.manifest={manifest}", f"data.embeddings={tmp_path / 'store'}",
                                "model.backbone=tiny", "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]",
                                "train.epochs=1", "train.batch_size=8", "train.eval_generate=false",
                                "generation.max_new_tokens=8", "generation.num_beams=1", f"output_dir={tmp_path / 'run'}"])
    summary = train(config, progress=False)
    assert summary["best_epoch"] == 1
    assert json.loads((tmp_path / "run" / "best" / "selected.json").read_text())["metric"] == "val/caption_loss"
    captioner = Captioner.from_pretrained(tmp_path / "run" / "best", device="cpu")
    assert captioner.model.config.music_dim == 753
    assert isinstance(captioner.extractor, MusicnnExtractor) and captioner.extractor.identity() == extractor.identity()
    song = next(iter(read_manifest(manifest).songs().values()))
    first = store.get(read_manifest(manifest).rows[0].song_id)
    result = captioner.caption_batch([song], ["a line about love"])[0]
    assert result.ok and isinstance(result.caption, str)  # (a 1-epoch model may say nothing)
    # The carried encoder gives the store's embedding for the same excerpt.
    clip = np.asarray(first)
    from alcap.audio.decode import load_audio

    wave = load_audio(song, 16000, captioner.excerpt).samples
    again = captioner.extractor.embed(torch.from_numpy(wave)[None])[0].numpy()
    assert np.abs(again.astype(np.float16).astype(np.float32) - clip).max() <= 1e-2 * np.abs(clip).max()


def test_audio_comes_as_a_path_bytes_a_file_object_or_a_waveform(tmp_path):
    import io

    import soundfile as sf
    from helpers import tone, write_audio

    import alcap
    from alcap.audio.decode import AudioError

    class LyricsEcho(EchoModel):
        config = SimpleNamespace(use_music=False)

        def generate(self, input_ids, attention_mask, **kwargs):
            self.batches.append(kwargs)
            return input_ids

    _, tokenizer = load_backbone("tiny", LYRICS * 4, vocab_size=300)
    model = LyricsEcho()
    captioner = Captioner(model, tokenizer, None, Excerpt(seconds=2.0), RunConfig(), GenerationConfig(batch_size=2))
    for name, rate in (("a.mp3", 44100), ("b.flac", 22050)):
        path = write_audio(tmp_path / name, tone(3.0, rate, channels=2), rate)
        expected = captioner._decode(path)
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
        with open(path, "rb") as handle:
            inputs = {"str": str(path), "bytes": path.read_bytes(), "file": handle,
                      "buffer": io.BytesIO(path.read_bytes())}
            for kind, audio in inputs.items():
                assert np.array_equal(captioner._decode(audio), expected), kind
        waves = {"(numpy, rate)": ((data.T, file_rate), None), "tensor + sample_rate": (torch.from_numpy(data.T), file_rate),
                 "mono": (data.mean(axis=1), file_rate)}
        for kind, (audio, sample_rate) in waves.items():  # the decoded samples, not the file: resampling alone
            got = captioner._decode(audio, sample_rate)
            assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, kind
    assert captioner.caption(path.read_bytes(), "one two") == "one two"
    assert captioner.caption_batch([(data.T, file_rate)], sample_rate=None)[0].lyrics == ""  # lyrics None: instrumental

    with pytest.raises(AudioError, match="needs its sample rate"):
        captioner.caption(data.T)
    with pytest.raises(ValueError, match="cannot caption a int: give a file path"):
        captioner.caption(3)
    with pytest.raises(AudioError, match="<audio bytes>: not a readable audio file"):
        captioner.caption(b"not audio")
    with pytest.raises(AudioError, match=r"<waveform>: a waveform is \(samples,\) or \(channels, samples\)"):
        captioner.caption((np.zeros((1, 2, 3)), 16000))

    model.batches.clear()  # generation options for one call, then the configured ones again
    captioner.caption(path, "one two", num_beams=1, max_new_tokens=5)
    captioner.caption(path, "one two")
    assert [(b["num_beams"], b["max_new_tokens"]) for b in model.batches] == [(1, 5), (4, 128)]
    with pytest.raises(ValueError, match="unknown generation option"):
        captioner.caption(path, "x", beams=2)
    assert alcap.GenerationConfig is GenerationConfig and "GenerationConfig" in alcap.__all__


def test_no_audio_is_refused_by_a_model_that_hears_the_music(tiny_models):
    from alcap.audio.decode import AudioError

    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    with pytest.raises(AudioError, match="no audio given; this model hears the music"):
        captioner.caption(None, "some lyrics")
    assert isinstance(Captioner.from_pretrained(tiny_models["lyrics"], device="cpu").caption(None, "some lyrics"), str)


def test_compiled_decoding_from_the_config_captions_as_eager_and_refuses_int8(tiny_models, tiny_corpus):
    """generation.compile reaches the model through the Captioner (here with torch.compile's
    `eager` backend: Dynamo captures the step, no code is generated)."""
    import dataclasses

    from alcap.data.manifest import read_manifest
    from alcap.data.store import EmbeddingStore

    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    rows = read_manifest(tiny_corpus / "corpus" / "manifest.jsonl").rows[:6]
    store = EmbeddingStore.open(tiny_corpus / "store")
    lyrics, music = [r.lyrics or "" for r in rows], [store.get(r.song_id) for r in rows]
    for beams in (1, 3):
        captioner.generation = dataclasses.replace(captioner.generation, num_beams=beams, compile=False)
        eager = captioner.caption_embeddings(lyrics, music)
        captioner.generation = dataclasses.replace(captioner.generation, compile=True, compile_backend="eager")
        assert captioner.caption_embeddings(lyrics, music) == eager, beams
    assert "compile_backend" in captioner.generation.kwargs() and "forward" not in captioner.model.bart.__dict__
    quantised = Captioner.from_pretrained(tiny_models["music"], device="cpu", quantize="int8")
    quantised.generation = captioner.generation
    with pytest.raises(ValueError, match="generation.compile does not combine with --quantize int8"):
        quantised.caption_embeddings(lyrics, music)
