"""Strategy objects a YAML string cannot name (the `_target_`s of recipes/trainer/*.yaml), and the
parallelisation they apply to a module's network: the model code (aotrain/modules/) stays unaware.

    trainer:
      strategy:
        _target_: aotrain.strategies.fsdp2     # or aotrain.strategies.fsdp (FSDP1, GPUs only)
        reshard_after_forward: true

    aotrain fit debug=smoke trainer=fsdp2 trainer.devices=2     # two CPU processes (gloo)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from open_clip.transformer import ResidualAttentionBlock

from data_filters.files import publish_dir, temp_dir_for

# Methods of an open_clip CLIP that run the network without calling forward(): FSDP2 must gather the
# root's parameters for them too (evaluation encodes images and texts separately).
FORWARD_METHODS = ("encode_image", "encode_text")


def configure_network(net: torch.nn.Module, grad_checkpointing: bool = False, compile: bool = False) -> None:
    """What every strategy applies to a module's network before any sharding (the modules'
    `configure_model` hook calls it, before the optimizer exists)."""
    if grad_checkpointing:
        net.set_grad_checkpointing(True)  # recompute activations in backward: less memory
    if compile:
        net.compile()  # in place: parameter names (and checkpoints) stay as they are


def full_parameters(strategy, pl_module):
    """A context inside which every rank evaluates the whole model: under FSDP or ZeRO-3 it gathers
    whole parameters; under FSDP2 it does nothing, as the sharded network's forward (and
    encode_image/encode_text) gathers them block by block. None when each rank already holds them
    (single device, DDP, ZeRO-1/2): then rank 0 alone evaluates.

        with full_parameters(trainer.strategy, module) or contextlib.nullcontext(): ...
    """
    if isinstance(strategy, FSDP2Strategy):
        return contextlib.nullcontext()
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False)
    if isinstance(strategy, DeepSpeedStrategy) and strategy.config.get("zero_optimization", {}).get("stage") == 3:
        import deepspeed  # CUDA machines only: not importable everywhere

        return deepspeed.zero.GatheredParameters(list(pl_module.parameters()), modifier_rank=None)
    return None


def fsdp(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded", cpu_offload: bool = False,
         activation_checkpointing: bool = False) -> FSDPStrategy:
    """FSDP1 with one unit per transformer block (image and text towers alike); needs CUDA GPUs."""
    blocks = {ResidualAttentionBlock}
    return FSDPStrategy(auto_wrap_policy=blocks, sharding_strategy=sharding_strategy,
                        state_dict_type=state_dict_type, cpu_offload=cpu_offload,
                        activation_checkpointing_policy=blocks if activation_checkpointing else None)


def fsdp2(reshard_after_forward: bool = True, activation_checkpointing: bool = False, mixed_precision: str = "auto",
          cpu_offload: bool = False) -> "FSDP2Strategy":
    """FSDP2 over every rank (recipes/trainer/fsdp2.yaml); CPU (gloo) or GPUs (nccl)."""
    if mixed_precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.strategy.mixed_precision must be auto, bf16 or fp32, got {mixed_precision!r}")
    return FSDP2Strategy(reshard_after_forward=reshard_after_forward, activation_checkpointing=activation_checkpointing,
                         mixed_precision=mixed_precision, cpu_offload=cpu_offload)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with every rank data-parallel and `shard_network` applied to
    the module's `net` before the optimizer is built. Checkpoints are torch.distributed.checkpoint
    folders (each rank writes its shard; `aotrain export` makes one file of them)."""

    def __init__(self, reshard_after_forward: bool = True, activation_checkpointing: bool = False,
                 mixed_precision: str = "auto", cpu_offload: bool = False):
        super().__init__(save_distributed_checkpoint=True)
        self.reshard_after_forward = reshard_after_forward
        self.activation_checkpointing = activation_checkpointing
        self.mixed_precision = mixed_precision
        self.cpu_offload = cpu_offload

    def setup_environment(self) -> None:
        # A one-dimensional mesh: all ranks (every node's) shard the model; no tensor parallelism.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer) -> None:
        net = self.lightning_module.net
        # The same recomputation as module.grad_checkpointing=true: open_clip checkpoints each block.
        configure_network(net, grad_checkpointing=self.activation_checkpointing)
        shard_network(net, self.device_mesh["data_parallel"], reshard_after_forward=self.reshard_after_forward,
                      mp_policy=_mp_policy(self.mixed_precision, self.root_device),
                      cpu_offload=self.cpu_offload)
        super().setup(trainer)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        # A sharded checkpoint is many files, and last.ckpt is rewritten at every save: write it into
        # a fresh folder beside its name and swap it in once every rank has written, so that a kill
        # during a save leaves the previous checkpoint whole (resume=auto then continues from it).
        path = Path(self.broadcast(str(filepath)))
        staging = Path(self.broadcast(str(temp_dir_for(path)) if self.is_global_zero else None))
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier()  # every rank's shard and rank 0's .metadata and meta.pt are written
        if self.is_global_zero:
            publish_dir(staging, path, overwrite=True)
        self.barrier()

    def model_to_device(self) -> None:
        if not self.cpu_offload:
            return super().model_to_device()
        # Offloaded shards stay in CPU memory (FSDP2 moves them to the device per use); buffers go.
        for module in self.model.modules():
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(self.root_device)


def _mp_policy(mixed_precision: str, device: torch.device):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda"):
        # bf16 compute, gradients reduced (and the sharded master weights kept) in fp32.
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()  # fp32: CPUs have no fast bf16 matmul, and CPU runs are for checking


def shard_network(net: torch.nn.Module, mesh, reshard_after_forward: bool = True, mp_policy=None,
                  cpu_offload: bool = False) -> torch.nn.Module:
    """Apply FSDP2 in place, torchtitan-style: one unit per open_clip residual block (image and text
    towers alike) and one at the root for the rest (embeddings, projections, heads, norms).

    FSDP2 cannot shard a 0-d parameter (CLIP's logit_scale, SigLIP's logit_bias): those stay whole on
    every rank, outside FSDP, and their gradients are averaged across ranks by a hook, as DDP would.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.fsdp import register_fsdp_forward_method

    options = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy(),
               "offload_policy": CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if cpu_offload else OffloadPolicy()}
    for block in [m for m in net.modules() if isinstance(m, ResidualAttentionBlock)]:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **options)
    scalars = {p for p in net.parameters() if p.dim() == 0}
    # The root's parameters are needed again at the start of backward: keep them gathered (torchtitan's choice).
    fully_shard(net, reshard_after_forward=False, ignored_params=scalars or None, **options)
    for param in scalars:
        param.register_post_accumulate_grad_hook(_average_across(mesh.get_group()))
    for name in FORWARD_METHODS:
        if hasattr(net, name):
            register_fsdp_forward_method(net, name)
    return net


def _average_across(group):
    def hook(param: torch.nn.Parameter) -> None:
        # SUM then divide: gloo has no AVG. Under gradient accumulation p.grad already holds the
        # averaged earlier micro-batches, and the average of (avg + g) is avg + avg(g): still right.
        torch.distributed.all_reduce(param.grad, group=group)
        param.grad.div_(torch.distributed.get_world_size(group))
    return hook
