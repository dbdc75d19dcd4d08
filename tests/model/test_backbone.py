import pytest
from transformers import AutoTokenizer, BartForConditionalGeneration

from alcap.model.backbone import load_backbone, train_bpe_tokenizer
from alcap.model.captioner import bart_config

TEXTS = ["A slow piano song about love.", "The lyrics are about freedom and the open road.",
         "I fell for you the moment that you smiled", "Neon signs are flashing on the avenue"] * 20


def test_trained_tokenizer_has_bart_special_ids_and_round_trips(tmp_path):
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300, min_frequency=1)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok("A slow piano song about love.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "A slow piano song about love."
    assert tok.decode(tok("naïve café — ünïcödé")["input_ids"], skip_special_tokens=True) == "naïve café — ünïcödé"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("Neon signs")["input_ids"] == tok("Neon signs")["input_ids"]
    padded = again(["a", "a much longer line"], padding=True)
    assert padded["input_ids"][0][-1] == 1 and padded["attention_mask"][0][-1] == 0


def test_presets_and_local_directories(tmp_path):
    model, tok = load_backbone("tiny", TEXTS, vocab_size=300)
    assert model.config.d_model == 64 and model.config.vocab_size == len(tok)
    assert bart_config("bart-base", 50265).d_model == 768
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_backbone(str(tmp_path))  # a local directory works offline
    assert isinstance(again, BartForConditionalGeneration) and len(tok2) == len(tok)
    with pytest.raises(ValueError, match="needs training texts"):
        load_backbone("tiny")
    with pytest.raises(ValueError, match="neither a preset"):
        load_backbone("no-such-thing")


def test_a_trained_alcap_model_is_a_backbone(tmp_path):
    import torch

    from alcap.model.captioner import AlcapConfig, AlcapModel

    bart, tok = load_backbone("tiny", TEXTS, vocab_size=300)
    with torch.no_grad():
        bart.model.shared.weight.normal_()  # not the init a fresh model would get
    AlcapModel(AlcapConfig(fusion_layers=[1, 2]), bart).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_backbone(str(tmp_path))
    assert tok2("Neon signs")["input_ids"] == tok("Neon signs")["input_ids"]
    for key, value in bart.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # Embeddings stay tied, so fine-tuning updates input and output embeddings together.
    assert again.lm_head.weight.data_ptr() == again.model.shared.weight.data_ptr() and again.training
