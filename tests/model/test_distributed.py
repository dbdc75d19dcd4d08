"""Two CPU processes (gloo) with DDP give the loss and gradients of one process on the whole batch:
the contrastive loss gathers every process's embeddings, same-song rows across processes included."""

import datetime
import math
import socket
import time

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import BartForConditionalGeneration

from alcap.model.alignment import gather_across_processes, info_nce
from alcap.model.captioner import AlcapConfig, AlcapModel, bart_config

WORLD = 2


def tiny_model() -> AlcapModel:
    torch.manual_seed(0)
    model = AlcapModel(AlcapConfig(fusion_layers=[1, 2], alpha=0.5), BartForConditionalGeneration(bart_config("tiny", 100)))
    return model.eval()  # no dropout, so both runs are deterministic; gradients still flow


def global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    n = 6
    return {"input_ids": torch.randint(4, 100, (n, 10), generator=g), "attention_mask": torch.ones(n, 10, dtype=torch.long),
            "labels": torch.randint(4, 100, (n, 7), generator=g), "music": torch.randn(n, 5, 256, generator=g),
            "music_mask": torch.ones(n, 5, dtype=torch.long),
            # rows 0 and 3, and 1 and 5, are one song each, and end up on different processes
            "song_ids": torch.tensor([10, 11, 12, 10, 13, 11])}


def _worker(rank: int, port: int, state: dict, out: str) -> None:
    # A timeout turns a stuck collective into a failure instead of a hung test run.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        model = tiny_model()
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        rows = slice(rank * 3, rank * 3 + 3)
        local = {k: v[rows] for k, v in global_batch().items()}
        output = ddp(**local)
        output.loss.backward()
        if rank == 0:
            torch.save({"loss": output.loss.detach(), "contrast": output.contrast_loss.detach(),
                        "bound": output.info_nce_bound,
                        "caption": output.caption_loss.detach(),
                        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}, out)
        # Uneven local batches gather too (3 rows here, 1 there).
        keep = 3 if rank == 0 else 1
        m, t, ids, world = gather_across_processes(local["music"][:keep, 0], local["music"][:keep, 1],
                                                   local["song_ids"][:keep])
        assert world == 2 and m.shape == (4, 256) and ids.tolist() == [10, 11, 12, 10]
        # DDP's reducer must go before its process group: freed afterwards (when this frame
        # ends) it could wait forever on a gloo thread (seen 1 run in 3 before this line).
        del ddp, output
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "rank0.pt"
    context = mp.spawn(_worker, args=(free_port(), state, str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process run did not finish within 240 s")
    got = torch.load(out)

    batch = global_batch()
    reference = model(**batch)
    reference.loss.backward()
    # The gathered InfoNCE is the global batch's, with same-song rows across processes masked.
    torch.testing.assert_close(got["contrast"], reference.contrast_loss.detach(), rtol=1e-5, atol=1e-6)
    # The bound counts each row's candidates in the global batch: rows 0, 1, 3, 5 share their
    # song with one other row (5 candidates each), rows 2 and 4 have all 6; not log(3 local rows).
    expected_bound = (4 * math.log(5) + 2 * math.log(6)) / 6 - float(reference.contrast_loss)
    assert float(got["bound"]) == pytest.approx(expected_bound, abs=1e-5)
    assert float(reference.info_nce_bound) == pytest.approx(expected_bound, abs=1e-5)
    z_m, z_t = reference.z_music, reference.z_lyrics
    assert not torch.isclose(info_nce(z_m[:3], z_t[:3], batch["song_ids"][:3], 0.3), reference.contrast_loss)
    # DDP-averaged gradients equal the one-process gradients (caption: equal token counts per process).
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any("alignment" in n for n in expected) and any("fusion" in n for n in expected)
