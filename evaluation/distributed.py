"""Evaluation split across processes: each rank scores a slice of the benchmark's images, then every
rank gathers all the per-image rows and computes the metrics as one process would (plain
torch.distributed, no Lightning).

    from evaluation import evaluate
    from evaluation.distributed import RankSlice
    # in every rank of an initialised process group (DDP; lockstep=True when weights are sharded):
    result = evaluate(model, splits, templates, rank_slice=RankSlice.of_process_group())
    result.images_scored          # this rank's images; result.metrics are the whole benchmark's

Exactly equal to one process.  The slices are runs of whole batches of the one-process schedule
(each split in `batch_size` chunks, split after split), contiguous, in rank order, about equal in
images (a batch more at most): every image is
encoded in the very batch it would be in alone, so its features and scores are bitwise the same, and
the gathered rows, concatenated in rank order, are the one-process rows in the one-process order.
Counts, top-k, class means, the CZSL curve (which needs every image's pair scores) and the tables
are then computed from the same numbers.

Lockstep.  Under FSDP/FSDP2/ZeRO-3 every forward is a collective (it gathers weights), so every rank
must make the same number of forward calls: `lockstep=True` makes a rank with fewer batches encode
one image as many times as it is short, and drop the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankSlice:
    """This process's part of an evaluation: rank `rank` of `world_size`, in lockstep or not."""

    rank: int = 0
    world_size: int = 1
    lockstep: bool = False  # every rank must call the model the same number of times (sharded weights)

    @classmethod
    def of_process_group(cls, lockstep: bool = False) -> "RankSlice":
        """This rank of the default process group; the whole benchmark when none is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), lockstep)

    def batches(self, sizes: Sequence[int], batch_size: int) -> list[tuple[int, int, int]]:
        """This rank's batches as (split index, start, stop) over splits of `sizes` images: a
        contiguous run of the one-process batches, rank 0's first. A batch goes to the rank whose
        equal share of the images holds its middle, so no rank has a batch more than its share.

        >>> RankSlice(1, 2).batches([200, 400], 256)   # alone: (0, 0, 200) (1, 0, 256) (1, 256, 400)
        [(1, 0, 256), (1, 256, 400)]
        """
        every = one_process_batches(sizes, batch_size)
        owners = _owners(every, sizes, self.world_size)
        return [b for b, owner in zip(every, owners) if owner == self.rank]

    def ranges(self, sizes: Sequence[int], batch_size: int) -> list[tuple[int, int, int]]:
        """This rank's images as (split index, start, stop), one range per split it has any of (its
        batches are contiguous). A DataLoader of `batch_size` over a range makes the same batches:
        each range starts at a batch boundary of its split."""
        runs: dict[int, tuple[int, int]] = {}
        for i, start, stop in self.batches(sizes, batch_size):
            runs[i] = (runs.get(i, (start, stop))[0], stop)
        return [(i, start, stop) for i, (start, stop) in runs.items()]

    def idle_calls(self, sizes: Sequence[int], batch_size: int) -> int:
        """Forward calls this rank must add to make as many as the busiest rank: 0 unless lockstep."""
        if not self.lockstep:
            return 0
        owners = _owners(one_process_batches(sizes, batch_size), sizes, self.world_size)
        return max(owners.count(r) for r in range(self.world_size)) - owners.count(self.rank)


def rank_batches(splits: Mapping, batch_size: int, rank_slice: RankSlice, num_workers: int = 0,
                 pin_memory: bool = False, progress: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(split index, images [B, 3, H, W], labels [B]) of this rank's slice of the benchmark `splits`
    ({name: dataset}), in the one-process batches and order (every split when alone)."""
    names = list(splits)
    for i, start, stop in rank_slice.ranges([len(ds) for ds in splits.values()], batch_size):
        ds = splits[names[i]]
        part = ds if (start, stop) == (0, len(ds)) else torch.utils.data.Subset(ds, range(start, stop))
        loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             pin_memory=pin_memory)
        if progress:
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc=f"eval {names[i]}", leave=False)
        for images, labels in loader:
            yield i, images, labels


def idle_forwards(forward, splits: Mapping, batch_size: int, rank_slice: RankSlice) -> None:
    """Under sharded weights (lockstep) every rank joins every forward: call `forward` on one image as
    many times as this rank has batches fewer than the busiest rank (the results are dropped)."""
    first = next(iter(splits.values()))
    for _ in range(rank_slice.idle_calls([len(ds) for ds in splits.values()], batch_size)):
        forward(first[0][0].unsqueeze(0))  # [1, 3, H, W]


def one_process_batches(sizes: Sequence[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(split index, start, stop) of every batch one process encodes: each split in order, in chunks."""
    return [(i, start, min(start + batch_size, n)) for i, n in enumerate(sizes) for start in range(0, n, batch_size)]


def _owners(batches: list[tuple[int, int, int]], sizes: Sequence[int], world_size: int) -> list[int]:
    """The rank of each batch: the one whose share [r N / W, (r + 1) N / W) of the N images in
    one-process order holds the batch's middle image (non-decreasing, so each rank's run is contiguous)."""
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]  # first image of each split
    total = sum(sizes)
    return [min((2 * (offsets[i] + start) + (stop - start)) * world_size // (2 * total), world_size - 1)
            for i, start, stop in batches]  # integers: 2 * middle * W // (2 N)


def gather_rows(rows: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """[n_r, ...] on each rank r -> [sum n_r, ...] on every rank, rank 0's rows first (CPU).

    all_gather wants equal shapes: each rank's rows are padded to the longest and cut back after.
    The trailing sizes are the largest any rank has, so a rank with no row that does not know them
    can pass `torch.empty(0, 0)` (same dtype and number of dimensions as the others).
    `device`: where the collective runs (a CUDA device under NCCL); default: the backend's own.
    """
    device = device or collective_device()
    world = dist.get_world_size()
    shape = torch.tensor(rows.shape, device=device)  # [ndim]
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    padded = rows.new_zeros(torch.stack(shapes).amax(0).tolist(), device=device)  # [max n_r, ...]
    padded[tuple(slice(0, n) for n in rows.shape)] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).cpu()


def collective_device() -> torch.device:
    """CUDA (this process's GPU) when the default group reduces with NCCL, which takes no CPU tensor; else CPU."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
