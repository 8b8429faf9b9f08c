"""One rank of test_selfsup's two-process loss check: imports no more than the loss needs, as every
spawned rank imports this module afresh."""
import torch
import torch.distributed as dist

from aotrain.modules.nt_xent import nt_xent


def views(n: int = 8, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [n, d] batches of projections: row i of each is one image's two views."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def rank_loss(rank: int, world: int, folder: str) -> None:
    """This rank's share of views(): its loss and its views' gradients, saved to <folder>/rank<r>.pt."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    a, b = views()
    local = slice(rank * len(a) // world, (rank + 1) * len(a) // world)
    a, b = a[local].clone().requires_grad_(), b[local].clone().requires_grad_()
    loss = nt_xent(a, b, 0.5, rank=rank, world_size=world)
    loss.backward()
    torch.save({"loss": loss.item(), "grad_a": a.grad, "grad_b": b.grad}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()
