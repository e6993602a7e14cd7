"""Import ERA's published adapters (megagonlabs/ERA: a `.pt` state dict of one nn.Linear with
`proj.weight` [out, in] and `proj.bias` [out]) into querylift's checkpoint format.

The file is read with `torch.load(weights_only=True)`: tensors only, never arbitrary pickles.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from adapters import AdapterKind, Manifest, ModelInfo
from adapters.checkpoint import Adapter, save_checkpoint

QWEN3_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"


def read_era_state(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(weight [out, in], bias [out]) as float32; ValueError naming what is wrong."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        raise ValueError(f"{path}: not a loadable tensor state dict ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in ("proj.weight", "proj.bias") if k not in state]
    if missing:
        raise ValueError(f"{path}: missing {missing} (has {sorted(state)})")
    weight = state["proj.weight"].detach().to(torch.float32).numpy()
    bias = state["proj.bias"].detach().to(torch.float32).numpy()
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(
            f"{path}: shapes {tuple(weight.shape)} and {tuple(bias.shape)} do not form a linear map"
        )
    return weight, bias


def import_era(
    pt_path: Path,
    out: Path,
    *,
    query_model: str = "Qwen3-Embedding-8B",
    document_model: str = "Qwen3-Embedding-0.6B",
    query_template: str = QWEN3_QUERY_TEMPLATE,
    instruction: str | None = None,
    pooling: str = "last",
    max_tokens: int | None = 8192,
) -> Adapter:
    weight, bias = read_era_state(pt_path)
    out_dim, in_dim = weight.shape
    manifest = Manifest(
        kind=AdapterKind.LINEAR,
        in_dim=in_dim,
        out_dim=out_dim,
        normalize=True,  # ERA L2-normalises the adapter output
        query_model=ModelInfo(
            name=query_model,
            dim=in_dim,
            pooling=pooling,
            prompt_template=query_template,
            instruction=instruction,
            max_tokens=max_tokens,
        ),
        document_model=ModelInfo(name=document_model, dim=out_dim, pooling=pooling),
        training={
            "mode": "both",
            "source": "ERA (megagonlabs/ERA), imported",
            "file": Path(pt_path).name,
            "file_sha256": hashlib.sha256(Path(pt_path).read_bytes()).hexdigest(),
        },
        name=f"era-{Path(pt_path).stem}",
    )
    return save_checkpoint(out, manifest, {"weight": weight, "bias": bias})
