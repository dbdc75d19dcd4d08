"""Training throughput of `alcap train` against the original ALCAP code itself.

The other training benchmarks model the original's data path inside alcap's model. This one
runs the original repository's own model and training step (`original_worker.py`, in the
original's Python environment) beside alcap's real training loop (`alcap.train.loop.train`:
manifest and embedding store on disk, its DataLoader, collator and logging), on the same
synthetic SI-like rows, with the same batch size, `bart-base` dimensions and BART's 50,265-token
vocabulary, and the paper's settings on both sides (fusion after encoder layers 4 and 5,
alpha 0.02, Adafactor at 5e-5). Each side trains one epoch over all rows per run, the sides
alternate, and each is timed from its first step to the end of its last. The rows are those of
a stratified sample (short to long) of alcap's batches over an epoch of a 60-batch pool of
SI-like rows, so that a few steps stand for a whole epoch, as in `train_throughput.py`:

- the original as its code does it: lyrics and captions padded to the longest of the data set
  (512 tokens for SI), random batches, HF's loss over every caption position;
- alcap as `alcap train` does it: length-grouped batches padded to their own longest row, the
  caption loss on labelled positions only; the time is the loop's own clock in log.jsonl.

The original is not part of alcap. Fetch it and give it an environment of its time:

    git clone https://github.com/zihaohe123/ALCAP /path/to/ALCAP
    python3 -m venv /path/to/alcap-original-env
    /path/to/alcap-original-env/bin/pip install torch==2.13.0 transformers==4.30.2 'numpy<2' \\
        'pandas<2.3' pytorch-metric-learning==2.3.0
    python benchmarks/original_training.py --original /path/to/ALCAP \\
        --original-python /path/to/alcap-original-env/bin/python

Without --original (or $ALCAP_ORIGINAL) the script says it skipped and exits 0. At bart-base the
original's batch-26 step (logits of 26 x 512 x 50,265 floats, kept with their gradients) needs
more than a 24 GiB machine, hence batch 8 by default here; on a GPU machine pass --batch-size 26.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_and_spread, report  # noqa: E402
from training import BART_VOCAB, MAX_TOKENS, stratified_batches, synthetic_rows, write_data  # noqa: E402

WORKER = Path(__file__).with_name("original_worker.py")
ALPHA = 0.02  # the paper's; both sides
# The paper's model and optimiser settings (configs/si-full.yaml), for alcap's side.
PAPER = ["model.alcap.fusion_layers=[4, 5]", "model.alcap.fusion_shared=true", "model.alcap.fusion_heads=1",
         "model.alcap.fusion_residual_scale=0.1", "model.alcap.temperature=0.3", f"model.alcap.alpha={ALPHA}",
         "train.optimizer=adafactor", "train.lr=5e-5"]
# The BartConfig fields the original's model reads, as plain values its transformers 4.x takes.
BART_FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
               "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
               "dropout", "attention_dropout", "activation_dropout", "activation_function", "init_std",
               "scale_embedding", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
               "forced_eos_token_id")


def not_a_checkout(path: Path) -> str | None:
    """Why `path` is not a checkout of the original repository, or None."""
    missing = [f for f in ("models/model.py", "models/modeling_bart.py", "models/infonce.py", "trainer.py")
               if not (path / f).is_file()]
    if missing:
        return f"{path} is not a checkout of the original ALCAP repository (no {', '.join(missing)})"
    return None


def original_batches(rows: list[dict], tokenizer, batch_size: int, seed: int) -> list[dict]:
    """The batches the original's data loader yields: every text padded to the data set's
    longest (its `padding=True` over the whole set, truncated at 512 tokens: 512 for SI's lyrics
    and interpretations alike), random order, music embeddings as float32 (119, 256) arrays,
    song ids as strings."""
    lyrics = tokenizer([r["lyrics"] for r in rows], padding="max_length", truncation=True, max_length=MAX_TOKENS,
                       return_tensors="pt")
    captions = tokenizer([r["caption"] for r in rows], padding="max_length", truncation=True, max_length=MAX_TOKENS,
                         return_tensors="pt")
    order = np.random.default_rng(seed).permutation(len(rows))
    batches = []
    for start in range(0, len(rows), batch_size):
        picked = torch.from_numpy(order[start:start + batch_size])
        batches.append({"music_id": [rows[i]["song_id"] for i in picked.tolist()],
                        "wav_emb": torch.from_numpy(np.stack([rows[i]["music"] for i in picked.tolist()]).astype(np.float32)),
                        "input_ids_lyrics": lyrics["input_ids"][picked],
                        "attention_mask_lyrics": lyrics["attention_mask"][picked],
                        "input_ids_comments": captions["input_ids"][picked]})
    return batches


def start_original(python: str, original: Path, batches_file: Path) -> tuple[subprocess.Popen, dict]:
    worker = subprocess.Popen([python, str(WORKER), "--original", str(original), "--batches", str(batches_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = worker.stdout.readline()
    if not line:
        worker.wait()
        sys.exit(f"error: the original's training step did not start with {python} (exit {worker.returncode}; its "
                 "error is above). Give --original-python an environment with the original's requirements "
                 "(see --help)")
    return worker, json.loads(line)["ready"]


def original_epoch(worker: subprocess.Popen) -> float:
    worker.stdin.write("epoch\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    if not line:
        sys.exit(f"error: the original's training step stopped (exit {worker.wait()}; its error is above)")
    answer = json.loads(line)
    return answer["rows"] / answer["seconds"]


def alcap_epoch(root: Path, manifest: Path, store: Path, backbone: Path, batch_size: int, steps: int, run: int) -> float:
    """rows/s of one epoch of `alcap train`, by its own clock: the `seconds` of its last step's
    log line (counted from the start of its first step)."""
    from alcap.config import load_config
    from alcap.train.loop import train

    out = root / f"alcap-{run}"
    sets = [f"data.manifest={manifest}", f"data.embeddings={store}", f"model.backbone={backbone}",
            f"data.max_lyrics_tokens={MAX_TOKENS}", f"data.max_caption_tokens={MAX_TOKENS}",
            f"train.batch_size={batch_size}", "train.epochs=1", "train.eval_generate=false",
            "train.log_every_steps=1", "data.val_split=none", f"output_dir={out}", *PAPER]
    train(load_config(None, sets), progress=False)
    steps_logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps_logged = [r for r in steps_logged if "train/loss" in r]
    assert len(steps_logged) == steps, f"alcap logged {len(steps_logged)} steps, expected {steps}"
    return batch_size * steps / steps_logged[-1]["seconds"]


def write_backbone(directory: Path, tokenizer) -> dict:
    """A random-init BART with bart-base's sizes and BART's vocabulary, saved as a local
    backbone directory (what `model.backbone` takes offline); returns its config's fields."""
    from transformers import BartForConditionalGeneration

    from alcap.model.captioner import bart_config

    config = bart_config("bart-base", BART_VOCAB)
    BartForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {name: getattr(config, name) for name in BART_FIELDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, default=os.environ.get("ALCAP_ORIGINAL") or None,
                        help="checkout of github.com/zihaohe123/ALCAP (default: $ALCAP_ORIGINAL)")
    parser.add_argument("--original-python", default=sys.executable,
                        help="Python of an environment with the original's requirements (default: this one)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step, both sides (default: 8)")
    parser.add_argument("--steps", type=int, default=3, help="steps per epoch: the rows are batch-size x steps (default: 3)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs of each side, alternating (default: 2)")
    args = parser.parse_args()
    if args.original is None:
        print("skipped: no original ALCAP checkout given (--original PATH or $ALCAP_ORIGINAL); fetch it with "
              "`git clone https://github.com/zihaohe123/ALCAP` (see this script's --help)")
        return
    if problem := not_a_checkout(args.original):
        parser.error(problem)

    from alcap.model.backbone import train_bpe_tokenizer

    # A few steps stand for an epoch of SI: the rows of a stratified sample (short to long) of
    # alcap's batches over a 60-batch pool; alcap's loop groups them again, the original draws
    # them at random.
    pool = synthetic_rows(args.batch_size * 60)
    tokenizer = train_bpe_tokenizer([t for r in pool[:200] for t in (r["lyrics"], r["caption"])], vocab_size=1000)
    rows = [pool[i] for b in stratified_batches(pool, tokenizer, args.batch_size, args.steps) for i in b]
    rates: dict[str, list[float]] = {"alcap": [], "original": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = write_backbone(tmp / "backbone", tokenizer)
        manifest, store = write_data(tmp, rows)
        torch.save({"bart_config": config, "batches": original_batches(rows, tokenizer, args.batch_size, seed=0),
                    "comment_len": MAX_TOKENS, "alpha": ALPHA, "seed": 0}, tmp / "batches.pt")
        worker, info = start_original(args.original_python, args.original, tmp / "batches.pt")
        alcap_epoch(tmp, manifest, store, tmp / "backbone", args.batch_size, args.steps, run=-1)  # warm-up
        try:
            for repeat in range(args.repeats):
                for side in (("original", "alcap") if repeat % 2 == 0 else ("alcap", "original")):
                    if side == "original":
                        rates[side].append(original_epoch(worker))
                    else:
                        rates[side].append(alcap_epoch(tmp, manifest, store, tmp / "backbone", args.batch_size,
                                                       args.steps, repeat))
                    print(f"{side}: {rates[side][-1]:.3f} rows/s", file=sys.stderr, flush=True)
        finally:
            worker.stdin.close()
            worker.wait()
    best, spread = best_and_spread(rates, 3)
    report("original_training", best["alcap"], best["original"], "rows/s",
           f"training, bart-base with BART's vocabulary, batch {args.batch_size}, {args.steps} steps per epoch, "
           f"alpha {ALPHA}, Adafactor: alcap train {best['alcap']:.3f} rows/s vs the original ALCAP code "
           f"(transformers {info['transformers']}) {best['original']:.3f} rows/s: {best['alcap'] / best['original']:.2f}x "
           f"(ranges over {args.repeats} epochs each: {spread})",
           batch_size=args.batch_size, steps=args.steps, runs=rates, original_transformers=info["transformers"],
           original_parameters=info["parameters"])


if __name__ == "__main__":
    main()
