"""The original ALCAP repository's training step, run for `original_training.py`.

That script starts this file with the original's own Python environment (transformers 4.x,
pytorch-metric-learning; see its docstring), so nothing here imports alcap. The original's
code runs unchanged:

- its model, `models.CommentGenerator_fusion` (BART-fusion, fusion after encoder layers 4
  and 5), whose `from_pretrained("facebook/bart-base")` is answered with the same sizes at
  random init (there is no model hub here; random weights cost the same time);
- its contrastive loss, `models.InfoNCE` (temperature 0.3);
- its training step, `Trainer.train_epoch`, over the batches the driver wrote, with the
  paper's settings (Adafactor at 5e-5, alpha 0.02 at layer 4, mean pooling).

`trainer.py` imports the repository's music encoder, which imports torchaudio; the training
step never calls it (music embeddings are precomputed), so where torchaudio is not installed
an empty module stands in for it.

Protocol: after building, one JSON line {"ready": ...} on stdout; then every line "epoch" on
stdin runs `train_epoch` over all batches and answers {"seconds": ..., "rows": ...}. The
original's own progress prints go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn


def build_trainer(repo: Path, bart_config: dict, batches: list, comment_len: int, alpha: float, seed: int):
    sys.path.insert(0, str(repo))
    import transformers  # before the stand-in below: it looks torchaudio up itself
    from transformers import BartConfig

    try:
        import torchaudio  # noqa: F401
    except ImportError:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import models
    import models.model
    import trainer

    torch.manual_seed(seed)
    config = BartConfig(**bart_config)
    generator = models.model.BartForMultimodalGeneration
    generator.from_pretrained = classmethod(lambda cls, _name, **kwargs: cls(config, **kwargs))
    model = nn.DataParallel(models.CommentGenerator_fusion(comment_len))  # as trainer.py wraps it
    criterion_contrast = nn.DataParallel(models.InfoNCE(temperature=0.3, dim1=256, dim2=768))
    optimizer = transformers.Adafactor(itertools.chain(model.parameters(), criterion_contrast.parameters()),
                                       lr=5e-5, warmup_init=False, relative_step=False, weight_decay=0.0)
    run = trainer.Trainer.__new__(trainer.Trainer)  # its __init__ reads the SI files from disk
    run.args = argparse.Namespace(w_contrast=alpha, start_epoch_contrast=0, agg="mean", contrast_layer=4)
    run.device = "cpu"
    run.model, run.optimizer, run.criterion_contrast = model, optimizer, criterion_contrast
    run.train_loader = batches
    parameters = sum(p.numel() for p in itertools.chain(model.parameters(), criterion_contrast.parameters()))
    return run, {"transformers": transformers.__version__, "torch": torch.__version__, "parameters": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="the original repository's checkout")
    parser.add_argument("--batches", type=Path, required=True, help="torch file the driver wrote")
    args = parser.parse_args()
    data = torch.load(args.batches, weights_only=True)
    with contextlib.redirect_stdout(sys.stderr):
        run, info = build_trainer(args.original, data["bart_config"], data["batches"], data["comment_len"],
                                  data["alpha"], data["seed"])
        warm = run.train_loader
        run.train_loader = warm[:1]
        run.train_epoch(0)  # warm-up: the allocator and the optimiser's state, as the driver's side has
        run.train_loader = warm
    rows = sum(len(b["music_id"]) for b in run.train_loader)
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        with contextlib.redirect_stdout(sys.stderr):
            start = time.perf_counter()
            run.train_epoch(0)
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
