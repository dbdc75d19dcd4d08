"""Text backbone and tokenizer: a pretrained BART directory/hub id, or a random-init preset.

With a preset there is no pretrained tokenizer either, so a byte-level BPE is trained on the
training lyrics and captions with HF `tokenizers`, with BART's special tokens at BART's ids
(<s>=0, <pad>=1, </s>=2, <unk>=3), and saved in a form `AutoTokenizer` loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, BartForConditionalGeneration, PreTrainedTokenizerFast

from .captioner import CONFIG_FILE, bart_config

PRESETS = ("tiny", "small", "bart-base")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as BART's own) trained on `texts`; `<s> text </s>` framing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=512)


def bart_from_alcap_model(directory: Path) -> BartForConditionalGeneration:
    """The BART inside a trained alcap model (encoder, decoder, embeddings; no fusion or alignment).

    Lets a captioner start from another one, e.g. fusion models from a lyrics-only model
    trained first, the way the paper's start from a pretrained BART.
    """
    from .captioner import AlcapModel

    bart = AlcapModel.from_pretrained(directory).bart  # safetensors' load_model restores the tied embeddings
    bart.train()
    return bart


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a model directory (or a hub id, where the hub is reachable)."""
    return AutoTokenizer.from_pretrained(str(path))


def load_backbone(backbone: str, texts: Iterable[str] | None = None, vocab_size: int = 4000,
                  tokenizer_dir: str | Path | None = None):
    """(BART model, tokenizer) for a preset name, a local directory or a hub id.

    Presets are random-init and get a BPE tokenizer trained on `texts`, or the one already
    trained and saved in `tokenizer_dir` (a resumed run must not train another).
    """
    if backbone in PRESETS:
        if tokenizer_dir is not None:
            tokenizer = load_tokenizer(tokenizer_dir)
        elif texts is None:
            raise ValueError(f"backbone preset {backbone!r} needs training texts to build its tokenizer")
        else:
            tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
        return BartForConditionalGeneration(bart_config(backbone, len(tokenizer))), tokenizer
    path = Path(backbone)
    if (path / CONFIG_FILE).is_file():  # an alcap model directory: start from its text model
        return bart_from_alcap_model(path), AutoTokenizer.from_pretrained(path)
    if not path.exists() and "/" not in backbone:
        raise ValueError(f"backbone {backbone!r} is neither a preset ({', '.join(PRESETS)}), a directory nor a hub id")
    try:
        model = BartForConditionalGeneration.from_pretrained(backbone)
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except OSError as exc:
        raise ValueError(f"cannot load the BART backbone {backbone!r}: {exc}. Offline, pass a local directory "
                         "holding config.json, the weights and the tokenizer files.") from None
    return model, tokenizer
