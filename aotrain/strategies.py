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


def configure_network(net: torch.nn.Module, grad_checkpointing: bool = False, compile: bool = False,
                      strategy=None) -> list[str]:
    """What every strategy applies to a module's network before any sharding (the modules'
    `configure_model` hook calls it, before the optimizer exists). Returns the names of the 0-d
    parameters given shape [1] for DeepSpeed (`vectorise_scalars`), else []."""
    if grad_checkpointing:
        net.set_grad_checkpointing(True)  # recompute activations in backward: less memory
    if compile:
        net.compile()  # in place: parameter names (and checkpoints) stay as they are
    return vectorise_scalars(net) if isinstance(strategy, DeepSpeedStrategy) else []


def vectorise_scalars(net: torch.nn.Module) -> list[str]:
    """Give each 0-d parameter (CLIP's logit_scale, SigLIP's logit_bias) shape [1], in place, and
    return their names. DeepSpeed broadcasts every parameter at start-up as bytes
    (`p.view(torch.uint8)`, deepspeed 0.19), which a 0-d tensor cannot be. Products and sums with a
    [1] tensor broadcast as with a scalar; the module saves the names in its checkpoints, and
    `aotrain export` gives these parameters back their shape ()."""
    names = []
    for name, param in list(net.named_parameters()):
        if param.dim() == 0:
            owner_name, _, attr = name.rpartition(".")
            owner = net.get_submodule(owner_name) if owner_name else net
            setattr(owner, attr, torch.nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad))
            names.append(name)
    return names


def gathers_in_forward(strategy) -> bool:
    """True under ZeRO-3: its hooks gather a module's parameters only around that module's forward,
    so evaluation must call the CLIP's forward, not encode_image/encode_text (which read the root's
    own parameters outside any forward)."""
    return isinstance(strategy, DeepSpeedStrategy) and strategy.config.get("zero_optimization", {}).get("stage") == 3


def full_parameters(strategy):
    """A context inside which every rank evaluates the whole model: under FSDP1 it gathers whole
    parameters; under FSDP2 and ZeRO-3 it does nothing, as the sharded network's forward gathers
    them module by module (FSDP2 also in encode_image/encode_text; ZeRO-3 evaluation goes through
    forward, `gathers_in_forward`). None when each rank already holds them (single device, DDP,
    ZeRO-1/2): then no forward is a collective. Either way each rank encodes its slice of the
    benchmark (aotrain/callbacks/evaluation.py); with a context, in lockstep.

        with full_parameters(trainer.strategy) or contextlib.nullcontext(): ...
    """
    # Not deepspeed.zero.GatheredParameters around the evaluation: on leaving it ZeRO-3 frees its
    # small persistent parameters while its forward hooks still hold them, and stops (seen on an
    # H200, deepspeed 0.19.8: "Cannot free a ZeRO-3 parameter while it is still active in submodules").
    if isinstance(strategy, FSDP2Strategy) or gathers_in_forward(strategy):
        return contextlib.nullcontext()
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False)
    return None


def fsdp(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded", cpu_offload: bool = False,
         activation_checkpointing: bool = False) -> "FSDP1Strategy":
    """FSDP1 with one unit per transformer block (image and text towers alike); needs CUDA GPUs."""
    blocks = {ResidualAttentionBlock}
    return FSDP1Strategy(auto_wrap_policy=blocks, sharding_strategy=sharding_strategy,
                         state_dict_type=state_dict_type, cpu_offload=cpu_offload,
                         activation_checkpointing_policy=blocks if activation_checkpointing else None)


class FSDP1Strategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the 0-d parameters left out of FSDP, which refuses them ("FSDP
    doesn't support scalar parameters"): they stay whole on every rank and their gradients are
    averaged by a hook, as under FSDP2 (`shard_network`); and with clipping by norm."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        scalars = [p for p in model.parameters() if p.dim() == 0]
        for param in scalars:  # FSDP moves only the parameters it manages
            param.data = param.data.to(self.root_device)
        if scalars:
            self.kwargs["ignored_states"] = scalars
        wrapped = super()._setup_model(model)
        for param in scalars:
            param.register_post_accumulate_grad_hook(_average_across(None, self.root_device))
        # Lightning's FSDP precision plugin refuses gradient_clip_algorithm='norm'; FSDP's own
        # clip_grad_norm_ takes the norm over every rank's shards, the scalars left out included.
        self.precision_plugin.clip_grad_by_norm = lambda optimizer, clip_val: wrapped.clip_grad_norm_(clip_val)
        return wrapped


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
        param.register_post_accumulate_grad_hook(_average_across(mesh.get_group(), torch.device(mesh.device_type)))
    for name in FORWARD_METHODS:
        if hasattr(net, name):
            register_fsdp_forward_method(net, name)
    return net


def _average_across(group, device: torch.device):
    """A post-accumulate-grad hook that averages a parameter's gradient over `group` (None: all
    ranks), reducing on `device`: under CPU offload the scalars live in CPU memory, and NCCL reduces
    GPU tensors only."""
    def hook(param: torch.nn.Parameter) -> None:
        grad = param.grad.to(device)
        # SUM then divide: gloo has no AVG. Under gradient accumulation p.grad already holds the
        # averaged earlier micro-batches, and the average of (avg + g) is avg + avg(g): still right.
        torch.distributed.all_reduce(grad, group=group)
        grad.div_(torch.distributed.get_world_size(group))
        if grad is not param.grad:
            param.grad.copy_(grad)
    return hook
