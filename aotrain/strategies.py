"""Strategy objects a YAML string cannot name (the `_target_`s of recipes/trainer/*.yaml).

    trainer:
      strategy:
        _target_: aotrain.strategies.fsdp
        sharding_strategy: FULL_SHARD
"""
from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from open_clip.transformer import ResidualAttentionBlock


def fsdp(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded", cpu_offload: bool = False,
         activation_checkpointing: bool = False) -> FSDPStrategy:
    """FSDP with one unit per transformer block (image and text towers alike)."""
    blocks = {ResidualAttentionBlock}
    return FSDPStrategy(auto_wrap_policy=blocks, sharding_strategy=sharding_strategy,
                        state_dict_type=state_dict_type, cpu_offload=cpu_offload,
                        activation_checkpointing_policy=blocks if activation_checkpointing else None)
