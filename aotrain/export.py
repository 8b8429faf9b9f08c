"""One Lightning checkpoint file from a sharded (DeepSpeed or FSDP) checkpoint folder.

    aotrain export outputs/runs/RUN/checkpoints/last.ckpt              # -> .../last-consolidated.ckpt
    aotrain export outputs/runs/RUN/checkpoints/last.ckpt out.ckpt     # choose the file
    aotrain export SRC DST --overwrite                                 # replace an existing DST
    aotrain eval checkpoint=outputs/runs/RUN/checkpoints/last-consolidated.ckpt

    from aotrain.export import export_checkpoint
    export_checkpoint("…/last.ckpt", "…/last-consolidated.ckpt")

SRC is one of
  - a Lightning single-file checkpoint: checked to load, then copied as it is;
  - a DeepSpeed ZeRO folder (recipes/trainer/deepspeed_stage_*.yaml): `latest` names the tag folder
    (`checkpoint/`) that holds the `*_model_states.pt` and `*_optim_states.pt` shards; the fp32 weights
    are merged from the optimizer shards and Lightning's state (epoch, global_step, hyper_parameters,
    aotrain_module, ...) comes from the rank-0 model-states file;
  - a Lightning FSDP sharded folder: torch.distributed.checkpoint files (`.metadata`, `__*_*.distcp`)
    holding the weights and optimizer state, plus `meta.pt` with the rest of Lightning's checkpoint
    dict. The weights are under "state_dict" for FSDP2 (recipes/trainer/fsdp2.yaml, Lightning's
    ModelParallelStrategy) and under "model" for FSDP1 (recipes/trainer/fsdp.yaml, FSDPStrategy).
DST is one file `aotrain eval` (aotrain.checkpoints.load_checkpoint) reads: {"state_dict": {"net.…": fp32
tensors}, "hyper_parameters", "aotrain_module", "aotrain_classes" (supervised), "global_step", "epoch", ...}.
Optimizer state is not exported (the file is for evaluation and `load_from_checkpoint`, not for resuming).
The file is written beside its final name and renamed into place, and checked to load with
torch.load(weights_only=True) before it is.

DeepSpeed shards and the DCP `.metadata` are pickles that need full unpickling to read: export only
checkpoints you trust (your own runs).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from data_filters.command import run_command
from data_filters.files import atomic_path, check_writable

FSDP_META = "meta.pt"          # lightning.fabric.utilities.load._METADATA_FILENAME
DCP_METADATA = ".metadata"     # torch.distributed.checkpoint's index of the shards
# Keys DeepSpeed adds to the rank-0 model-states file next to Lightning's client state.
_DEEPSPEED_KEYS = {
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "skipped_steps", "global_steps",
    "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version", "csr_tensor_module_names",
    "sparse_tensor_module_names", "checkpoint_parallel_dimensions",
}
_NOT_EXPORTED = {"optimizer_states"}
# The checkpoint entry naming the 0-d parameters given shape [1] under DeepSpeed
# (aotrain.strategies.vectorise_scalars); export gives them back shape ().
VECTORISED_KEY = "aotrain_vectorised_scalars"
_DCP_WEIGHTS = ("state_dict", "model")  # FSDP2 (ModelParallelStrategy), FSDP1 (FSDPStrategy)


def detect_format(src) -> str:
    """"file", "deepspeed" or "fsdp" for an existing checkpoint path; FileNotFoundError/ValueError otherwise."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if src.is_file():
        return "file"
    if (src / FSDP_META).is_file() and (src / DCP_METADATA).is_file():
        return "fsdp"
    if (src / "latest").is_file():
        return "deepspeed"
    raise ValueError(f"{src} is a folder but neither a DeepSpeed checkpoint (no 'latest' file) nor a Lightning "
                     f"FSDP sharded checkpoint (no '{FSDP_META}' and '{DCP_METADATA}')")


def default_destination(src) -> Path:
    """last.ckpt (file or folder) -> last-consolidated.ckpt; a folder without the suffix -> <folder>.ckpt."""
    src = Path(src)
    if src.suffix == ".ckpt":
        return src.with_name(f"{src.stem}-consolidated.ckpt")
    if src.is_dir():
        return src.with_name(f"{src.name}.ckpt")
    return src.with_name(f"{src.stem}-consolidated.ckpt")


def _fp32(state: dict) -> dict:
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def _strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _check_file(src: Path) -> None:
    from aotrain.checkpoints import load_checkpoint_file  # the one reader of checkpoint files

    ckpt = load_checkpoint_file(src, mmap=True)  # an empty, text or cut-short file: one line
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{src} is not a Lightning checkpoint (no state_dict)")


def _read_deepspeed(src: Path) -> dict:
    tag = (src / "latest").read_text().strip()
    tag_dir = src / tag
    if not tag_dir.is_dir():
        raise ValueError(f"{src}/latest names {tag!r}, but {tag_dir} is not a folder")
    model_files = sorted(tag_dir.glob("*_model_states.pt"))
    rank0 = [f for f in model_files if f.name in ("mp_rank_00_model_states.pt",
                                                  "zero_pp_rank_0_mp_rank_00_model_states.pt")]
    if not rank0 or not list(tag_dir.glob("*_optim_states.pt")):
        raise ValueError(f"{tag_dir} holds no DeepSpeed ZeRO shards (*_model_states.pt and *_optim_states.pt)")
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:
        raise ValueError(f"exporting a DeepSpeed checkpoint needs the deepspeed package ({e})") from None
    state = get_fp32_state_dict_from_zero_checkpoint(str(src), tag=tag)
    client = torch.load(rank0[0], map_location="cpu", weights_only=False)
    ckpt = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    # Lightning < 2.1 wrapped the module in _LightningModuleWrapperBase: drop its prefix.
    ckpt["state_dict"] = _fp32(_strip_prefix(state, "_forward_module."))
    return ckpt


def _read_fsdp(src: Path) -> dict:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    try:
        meta = torch.load(src / FSDP_META, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {src / FSDP_META}: {str(e).splitlines()[0]}") from None
    reader = FileSystemReader(src)
    try:
        entries = {name.split(".", 1)[0] for name in reader.read_metadata().state_dict_metadata}
    except Exception as e:
        raise ValueError(f"cannot read {src / DCP_METADATA}: {str(e).splitlines()[0]}") from None
    key = next((k for k in _DCP_WEIGHTS if k in entries), None)
    if key is None:
        raise ValueError(f"{src} holds no weights ({' or '.join(_DCP_WEIGHTS)} entry): not a Lightning FSDP checkpoint")
    loaded: dict = {}
    # As torch.distributed.checkpoint.format_utils.dcp_to_torch_save, but the weights only (not optimizer_*).
    _load_state_dict(loaded, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys=[key]), no_dist=True)
    ckpt = dict(meta)
    ckpt["state_dict"] = _fp32(loaded[key])
    return ckpt


def consolidate(src) -> dict:
    """The single-file checkpoint dict of a DeepSpeed or FSDP sharded folder (in memory)."""
    src = Path(src)
    kind = detect_format(src)
    if kind == "file":
        raise ValueError(f"{src} is already a single file")
    ckpt = _read_deepspeed(src) if kind == "deepspeed" else _read_fsdp(src)
    for key in _NOT_EXPORTED:
        ckpt.pop(key, None)
    for name in ckpt.pop(VECTORISED_KEY, []):  # shape [1] for DeepSpeed only (strategies.vectorise_scalars)
        ckpt["state_dict"][name] = ckpt["state_dict"][name].reshape(())
    if not ckpt["state_dict"]:
        raise ValueError(f"{src} holds no weights")
    return ckpt


def export_checkpoint(src, dst=None, overwrite: bool = False) -> Path:
    """Write the single-file Lightning checkpoint of `src` (file, DeepSpeed or FSDP folder) to `dst`; return dst."""
    src = Path(src)
    kind = detect_format(src)
    dst = Path(dst) if dst is not None else default_destination(src)
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            raise ValueError(f"the destination is the source: {dst}")
        if dst.is_dir():
            raise ValueError(f"{dst} is a folder; name a file to write")
        if not overwrite:
            raise FileExistsError(f"{dst} already exists (pass --overwrite to replace it)")
    check_writable(dst)  # before consolidating, which can take minutes
    if kind == "file":
        _check_file(src)
        with atomic_path(dst, ".ckpt") as tmp:
            shutil.copyfile(src, tmp)
        return dst
    ckpt = consolidate(src)
    with atomic_path(dst, ".ckpt") as tmp:
        torch.save(ckpt, tmp)
        try:  # what aotrain eval will do; a failure here leaves no file behind
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"the consolidated checkpoint of {src} does not load with weights_only=True: "
                             f"{str(e).splitlines()[0]}") from None
    return dst


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="aotrain export",
        description="Write one Lightning checkpoint file from a DeepSpeed or FSDP sharded checkpoint folder "
                    "(a single file is checked and copied), for aotrain eval checkpoint=FILE.")
    parser.add_argument("src", metavar="SRC", help="checkpoint: a DeepSpeed folder, an FSDP sharded folder or a file")
    parser.add_argument("dst", metavar="DST", nargs="?",
                        help="file to write (default: SRC with .ckpt -> -consolidated.ckpt, or <folder>.ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return run_command(parser, _export, argv)


def _export(args) -> int:
    kind = detect_format(args.src)
    dst = export_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    what = "copied" if kind == "file" else f"consolidated the {'DeepSpeed' if kind == 'deepspeed' else 'FSDP'} checkpoint"
    print(f"aotrain export: {what} {args.src} -> {dst}")
    return 0
