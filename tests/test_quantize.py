"""int8 captioning on the CPU (`--quantize int8`): what is quantised, how close it stays, where it is recorded."""

import json

import numpy as np
import pytest
import torch

from alcap.cli import main
from alcap.inference import Captioner, quantize_model


def plain_linears(model):
    return [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]


def test_int8_quantises_the_captioners_linear_layers_and_not_the_music_encoder(tiny_models, tiny_corpus):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    float32 = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    int8 = Captioner.from_pretrained(tiny_models["music"], device="cpu", quantize="int8")
    assert int8.quantize == "int8" and float32.quantize == "none"
    linears = plain_linears(float32.model)
    assert "bart.lm_head" in linears and any(".fc1" in n for n in linears) and any("fusion" in n for n in linears)
    assert plain_linears(int8.model) == []  # every one replaced ...
    quantised = {n for n, m in int8.model.named_modules() if isinstance(m, DynamicLinear)}
    assert quantised == set(linears)  # ... by its dynamic int8 version
    assert plain_linears(float32.model) == linears  # the float model it came from is left as it was
    wave = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    h_float, h_int8 = (c.embed_music({0: wave})[0] for c in (float32, int8))
    np.testing.assert_array_equal(h_float, h_int8)  # h_m stay those of the stores and the library


def teacher_forced(captioner, lyrics, captions, music):
    """(logits at the caption's real positions, the caption loss) with the references as input."""
    from alcap.data.dataset import pad_music

    tok = captioner.tokenizer
    enc = tok(lyrics, padding=True, return_tensors="pt")
    ids = tok(captions, padding=True, return_tensors="pt")["input_ids"]
    labels = ids.masked_fill(ids == tok.pad_token_id, -100)
    m, mask = pad_music(music)
    with torch.no_grad():
        out = captioner.model(enc["input_ids"], enc["attention_mask"], labels=labels, music=m, music_mask=mask)
    return out.logits[labels != -100], out.loss.item()


def test_int8_stays_within_the_quality_bound_of_float32(tiny_models, tiny_corpus):
    """The bound the README states for int8 against float32 on the same songs: the caption loss
    within 0.5%, 95% of the next-token choices equal; and generated tokens mostly the same."""
    from alcap.data.manifest import read_manifest
    from alcap.data.store import EmbeddingStore
    from alcap.evaluate import songs_with_references

    float32 = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    int8 = Captioner.from_pretrained(tiny_models["music"], device="cpu", quantize="int8")
    items = songs_with_references(read_manifest(tiny_corpus / "corpus" / "manifest.jsonl"))
    store = EmbeddingStore.open(tiny_corpus / "store")
    music = [torch.from_numpy(store.get(s["song_id"])) for s in items]
    lyrics, captions = [s["lyrics"] for s in items], [s["references"][0] for s in items]
    ref, ref_loss = teacher_forced(float32, lyrics, captions, music)
    got, loss = teacher_forced(int8, lyrics, captions, music)
    assert abs(loss - ref_loss) / ref_loss < 0.005
    assert (got - ref).norm() / ref.norm() < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95
    tokens = []
    for captioner in (float32, int8):  # 4 beams, forced to 10 tokens: a one-epoch model stops at once otherwise
        captioner.generation = captioner.generation.with_overrides(num_beams=4, min_new_tokens=10, max_new_tokens=10)
        tokens.append([captioner.tokenizer(c)["input_ids"] for c in captioner.caption_embeddings(lyrics, music)])
    same = [np.mean([a == b for a, b in zip(x, y)]) for x, y in zip(*tokens)]
    assert np.mean(same) > 0.8


def test_int8_is_refused_on_a_gpu_and_unknown_modes_are_named(tiny_models):
    model = Captioner.from_pretrained(tiny_models["lyrics"], device="cpu").model
    with pytest.raises(ValueError, match="int8 quantisation is for captioning on the CPU, not on cuda.*bf16"):
        quantize_model(model, "int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="quantize must be one of none, int8, not 'int4'"):
        quantize_model(model, "int4", torch.device("cpu"))
    assert quantize_model(model, "none", torch.device("cpu")) is model


def test_caption_and_library_take_quantize_and_the_library_records_it(tiny_models, tiny_corpus, tmp_path, capsys):
    from alcap.data.manifest import read_manifest
    from alcap.library import Library

    songs = list(read_manifest(tiny_corpus / "corpus" / "manifest.jsonl").songs().values())
    first, second = songs[0], songs[1]  # audio paths
    out = tmp_path / "captions.jsonl"
    assert main(["caption", first, "--model", str(tiny_models["music"]), "--quantize", "int8", "--jsonl", str(out),
                 "--quiet"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Captioner.from_pretrained(tiny_models["music"], device="cpu", quantize="int8").caption(first)
    assert row["caption"] == expected
    lib = tmp_path / "lib"
    common = ["--model", str(tiny_models["music"]), "--workers", "0", "--quiet"]
    assert main(["library", "add", str(lib), first, "--quantize", "int8", *common]) == 0
    with Library.open(lib) as library:
        assert library.identity["captioning_model"]["quantize"] == "int8"
        assert library.songs()[0].caption == expected
    capsys.readouterr()
    assert main(["library", "add", str(lib), second, *common]) == 2  # float captions would mix with int8 ones
    assert "captioning_model.quantize: library has 'int8', this run has None" in capsys.readouterr().err
    float_lib = tmp_path / "float-lib"
    assert main(["library", "add", str(float_lib), first, *common]) == 0
    with Library.open(float_lib) as library:
        assert "quantize" not in library.identity["captioning_model"]  # float libraries are as before
    assert main(["library", "recaption", str(lib), "--model", str(tiny_models["music"]), "--workers", "0",
                 "--quiet"]) == 0
    with Library.open(lib) as library:  # captioned again as it was held: int8
        assert library.identity["captioning_model"]["quantize"] == "int8" and len(library) == 1


def test_int8_activations_use_all_8_bits_only_where_the_kernels_sum_in_int32(tiny_models, monkeypatch):
    """torch keeps int8 activations to 7 bits because fbgemm's AVX2 kernels sum in int16 and
    saturate; with AVX-512 VNNI (int32 sums) alcap uses 8, which halves their rounding error."""
    import copy
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    import alcap.inference as inference
    from alcap.inference import FullRangeDynamicLinear, int8_full_range

    model = Captioner.from_pretrained(tiny_models["lyrics"], device="cpu").model
    for full, kind in ((True, FullRangeDynamicLinear), (False, DynamicLinear)):
        monkeypatch.setattr(inference, "int8_full_range", lambda full=full: full)
        quantised = quantize_model(copy.deepcopy(model), "int8", torch.device("cpu"))
        assert {type(m) for m in quantised.modules() if isinstance(m, DynamicLinear)} == {kind}
    if not int8_full_range():
        pytest.skip("this CPU has no AVX-512 VNNI: int8 activations keep torch's 7 bits here")
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(768, 768))
    x = torch.randn(64, 768)
    exact = layer(x)
    errors = {}
    for kind in (DynamicLinear, FullRangeDynamicLinear):
        with warnings.catch_warnings():  # torch's note that eager quantisation moves to torchao
            warnings.simplefilter("ignore")
            q = quantize_dynamic(copy.deepcopy(layer), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                 dtype=torch.qint8, mapping={torch.nn.Linear: kind})
        errors[kind] = ((q(x) - exact).norm() / exact.norm()).item()
    # The weights' own rounding stays, so less than half is not to be had: 0.019 -> 0.010 here.
    assert errors[FullRangeDynamicLinear] < 0.7 * errors[DynamicLinear]
