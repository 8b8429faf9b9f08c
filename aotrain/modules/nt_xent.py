"""SimCLR's NT-Xent loss over the global batch: what the self-supervised arm (aotrain/modules/selfsup.py)
trains with.

    loss = nt_xent(z_a, z_b, temperature=0.5)                          # one process: [B, D] each
    loss = nt_xent(z_a, z_b, 0.5, rank=r, world_size=w)                # each rank its own B images

Across ranks each rank scores its own views against every rank's, gathered with their gradient by
open_clip's gather_features (as CLIPModule's loss does), so the mean of the ranks' losses is the
one-process loss on the global batch and DDP's averaged gradient is its gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """SimCLR's NT-Xent loss of this rank's two views' projections `a`, `b` [B, D] (row i of each is
    one image) over the global batch of N = B x world_size images: every view's cross-entropy of
    picking its image's other view among the 2N - 1 other views (cosine similarity / temperature),
    averaged over this rank's 2B views. Under several ranks the other ranks' views are gathered with
    their gradient; the mean over ranks is the loss of one process holding the global batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    all_a, all_b = a, b  # [N, D] each
    if world_size > 1:
        from open_clip.loss import gather_features  # imported here: a rank process of the tests needs no more

        all_a, all_b = gather_features(a, b, local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    n, local = all_a.shape[0], a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([all_a, all_b]).T / temperature  # [2B, 2N]
    own = torch.arange(local, device=a.device) + rank * local  # this rank's images among the N
    itself = torch.cat([own, own + n])  # where each of the 2B views sits among the 2N
    other_view = torch.cat([own + n, own])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * local, device=a.device), itself] = True
    return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), other_view)
