"""Contrastive audio-lyrics alignment (ALCAP's "align before fuse").

`info_nce` is the loss on pooled, projected embeddings; `AlignmentHead` pools the lyrics
states that enter the first fusion layer, projects them into the music space and pools
the music sequence, so that the loss compares one vector per song on each side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def song_index(song_ids: Sequence | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Song ids of any hashable type -> (N,) integer tensor, equal where the songs are equal."""
    if song_ids is None:
        return torch.arange(n, device=device)
    if isinstance(song_ids, torch.Tensor):
        return song_ids.to(device)
    lookup: dict = {}
    return torch.tensor([lookup.setdefault(s, len(lookup)) for s in song_ids], device=device)


def info_nce(
    music_emb: torch.Tensor,
    lyrics_emb: torch.Tensor,
    song_ids: Sequence | torch.Tensor | None = None,
    temperature: float = 0.3,
    symmetric: bool = False,
) -> torch.Tensor:
    """InfoNCE between paired (N, D) music and lyrics embeddings, cosine similarity / temperature;
    returns the scalar loss (mean over rows).

    Row i's positive is column i. Rows of the same song (equal `song_ids`) are not negatives
    of each other: a song usually has several captions and so appears several times in a
    batch. One-way (music -> lyrics) as in ALCAP's Eq. 1 unless `symmetric`.
    """
    if music_emb.shape != lyrics_emb.shape or music_emb.dim() != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(music_emb.shape)} and {tuple(lyrics_emb.shape)}")
    n = music_emb.shape[0]
    logits = F.normalize(music_emb, dim=-1) @ F.normalize(lyrics_emb, dim=-1).T / temperature  # (N, N)
    ids = song_index(song_ids, n, logits.device)
    same_song = ids[:, None] == ids[None, :]
    not_negative = same_song & ~torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(not_negative, float("-inf"))
    target = torch.arange(n, device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss


def info_nce_log_candidates(song_ids: torch.Tensor) -> torch.Tensor:
    """Mean over rows of log K_i, K_i = the candidates row i is scored against in `info_nce`
    (its positive and every row of another song). `mean log K - L` is the InfoNCE lower bound
    on the music-lyrics mutual information; same-song rows are no candidates, so with
    duplicates K is below the batch size."""
    same_song = song_ids[:, None] == song_ids[None, :]
    candidates = song_ids.shape[0] - same_song.sum(dim=1) + 1
    return candidates.double().log().mean().float()


def gather_across_processes(music_emb: torch.Tensor, lyrics_emb: torch.Tensor, song_ids: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every process's rows of a contrastive batch, in rank order, so negatives come from the
    global batch (as open_clip's ClipLoss gathers them). Other processes' rows arrive without
    gradient; this process's rows are the local tensors themselves, so gradients reach exactly
    the local embeddings. Song ids travel too, so same-song rows on different processes are
    not negatives. Local batch sizes may differ. Returns (music, lyrics, ids, world size);
    without torch.distributed (or with one process) the inputs come back unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return music_emb, lyrics_emb, song_ids, 1
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([music_emb.shape[0]], device=music_emb.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)

    def gather(local: torch.Tensor) -> list[torch.Tensor]:
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        parts = [part[:size] for part, size in zip(parts, sizes)]
        parts[rank] = local  # keeps the autograd graph for this process's rows
        return parts

    ids = song_ids.to(music_emb.device)
    return torch.cat(gather(music_emb)), torch.cat(gather(lyrics_emb)), torch.cat(gather(ids)), world


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence of (B, L, D), counting only positions where mask is 1."""
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)  # (B, L, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AlignmentHead(nn.Module):
    """z_t = W . masked_mean(h_t) (d_model -> music_dim); z_m = masked_mean(h_m), used as is."""

    def __init__(self, d_model: int, music_dim: int):
        super().__init__()
        self.proj = nn.Linear(d_model, music_dim)

    def forward(self, lyrics_states, lyrics_mask, music_states, music_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        z_t = self.proj(masked_mean(lyrics_states, lyrics_mask))  # (B, music_dim)
        z_m = masked_mean(music_states, music_mask)  # (B, music_dim)
        return z_m, z_t
