"""Models for evaluation from files: an aotrain Lightning checkpoint, or an open_clip config plus weights.

    model, info = load_checkpoint("outputs/runs/toy_low_nmi-.../checkpoints/last.ckpt")
    model, info = load_open_clip("ViT-B-32", "/data/weights/vit_b32_cc12m.pt")
    adapter = evaluation.models.adapter_for(model, info["kind"], towers.tokenizer(info["model_name"]), "cuda")
    # model: a CLIP or SupervisedNet in eval mode; info: {"kind", "model_name", "step", "run_dir", "source"}

Errors a user can cause (missing file, unknown model, weights that do not fit the architecture)
are ValueError/FileNotFoundError with one clear message; the CLI prints it without a traceback.
Files are read with torch.load(weights_only=True): tensors and plain containers only, no pickled
code from someone else's file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch


def load_checkpoint_file(path, mmap: bool = False):
    """torch.load(path, weights_only=True) of one checkpoint file, or one clear line saying why not.

        ckpt = load_checkpoint_file("outputs/runs/RUN/checkpoints/last.ckpt")
        load_checkpoint_file("empty.ckpt")   # ValueError: cannot read empty.ckpt as a checkpoint: the file is empty ...

    FileNotFoundError for a missing file, ValueError for a folder, an empty file, a file that is not
    a torch checkpoint (text, another format) or one cut short (an interrupted copy or save).
    `mmap=True` maps the tensors instead of reading them: a cheap check of a large checkpoint.
    aotrain eval, aotrain export and `aotrain fit resume=` read checkpoints through this function.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file (a sharded checkpoint: aotrain export {path})")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {path} as a checkpoint: the file is empty (0 bytes; an interrupted save or copy?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types (even IndexError, KeyError) for a damaged file
        raise ValueError(f"cannot read {path} as a checkpoint: {_why_unreadable(path, e)}") from None


def _why_unreadable(path: Path, error: Exception) -> str:
    # torch's own messages for these cases are a bare byte value or an index error: say what the file is.
    said = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            return f"the file is cut short ({path.stat().st_size:,} bytes; an interrupted save or copy?)"
        if head.startswith(b"\x80"):  # a pickle: torch's legacy format, which torch explains itself
            return said
        return "not a torch checkpoint (torch.save writes a zip archive)"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        damaged = "its index"
    if damaged is not None:
        return f"the file is damaged ({damaged} does not read back; an interrupted save or copy?)"
    return said


def _read(path: Path) -> dict:
    return load_checkpoint_file(path)


def _strip(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: torch.nn.Module, state: dict, source: str, model_name: str) -> None:
    """Load `state` strictly; a mismatch names the first differing tensors instead of a wall of keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        details = []
        if shapes:
            k = shapes[0]
            details.append(f"{len(shapes)} tensor(s) differ in shape (e.g. {k}: file {tuple(state[k].shape)} "
                           f"vs model {tuple(own[k].shape)})")
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ValueError(f"the weights in {source} do not fit model {model_name}: {'; '.join(details)}")
    model.load_state_dict(state)


def _run_dir(path: Path) -> Path | None:
    """<run_dir>/checkpoints/<file>.ckpt -> <run_dir>, when that folder holds the run's config.yaml."""
    run_dir = path.resolve().parent.parent
    return run_dir if (run_dir / "config.yaml").is_file() else None


def load_checkpoint(path, model_name: str | None = None):
    """(network in eval mode, info) from an aotrain Lightning checkpoint; `model_name` overrides the saved one.

    The network is an open_clip CLIP (info["kind"] == "clip") or a SupervisedNet ("supervised").
    """
    from aotrain import towers  # open_clip: imported only once a model is built

    path = Path(path)
    ckpt = _read(path)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not an aotrain checkpoint (no state_dict/hyper_parameters); "
                         "for open_clip weights use model_name=NAME weights=PATH")
    kind = ckpt.get("aotrain_module", "clip")
    name = model_name or ckpt["hyper_parameters"]["model_name"]
    if kind == "clip":
        net = towers.build_clip(name)
    elif kind == "supervised":
        towers.model_config(name)  # clear error for an unknown name
        net = towers.SupervisedNet(name, ckpt["aotrain_classes"])
    elif kind == "self":  # nothing to score the benchmark with; its probe needs the training data
        raise ValueError(f"{path} is a self-supervised image tower (supervision=self): it has no text tower or "
                         "head to evaluate; its linear probe is fitted at the end of aotrain fit, on training "
                         "samples (<run folder>/eval/probe.json)")
    else:
        raise ValueError(f"{path} holds a {kind!r} module, which aotrain eval cannot read")
    load_weights(net, _strip(ckpt["state_dict"], "net."), str(path), name)
    info = {"kind": kind, "model_name": name, "step": int(ckpt.get("global_step", 0)), "run_dir": _run_dir(path),
            "source": str(path.resolve())}
    return net.eval(), info


def load_open_clip(model_name: str, weights):
    """(CLIP in eval mode, info) from an open_clip model config and a weights file (state dict, or
    open_clip_train's {"state_dict": ...} with DDP's "module." prefix)."""
    from aotrain import towers

    path = Path(weights)
    state = _read(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = towers.build_clip(model_name)
    load_weights(model, _strip(state, "module."), str(path), model_name)
    return model.eval(), {"kind": "clip", "model_name": model_name, "step": 0, "run_dir": None,
                          "source": str(path.resolve())}
