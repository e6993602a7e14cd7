"""Torch twins of the adapter kinds in adapters/kinds.py, for training.

Each module's parameters carry exactly the checkpoint's tensor names, so `export_tensors`
is a plain copy and `build_module(..., init=adapter.tensors)` reloads a checkpoint. Forward
returns UN-normalised outputs (the numpy forward normalises afterwards when the manifest
says so; losses here normalise themselves).

Starting points (`init_tensors`):
- linear: a given base (weight, bias), e.g. a ridge fit; else torch's nn.Linear default init.
- mlp: torch's default init; the last layer scaled down (`mlp_out_scale`), b2 zero.
- lowrank: weight/bias = a given base (identity + 0 for same-dim pairs), up = 0, down small
  random: it starts exactly at the base map and learns a rank-r correction.
- hybrid: weight = [0 | I] (zero on the query-model part, identity on the document-model
  part), bias 0: it starts exactly at the document model's own query vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapters.manifest import AdapterKind, Manifest, param_problems, resolve_params

Init = Mapping[str, np.ndarray]


def _check(kind: AdapterKind, in_dim: int, out_dim: int, params: Mapping[str, Any]) -> dict:
    """Validate (kind, dims, params) as a manifest would; return the params with defaults."""
    params = dict(params)
    if kind == AdapterKind.HYBRID:
        qd, dd = params.get("query_dim"), params.get("document_dim")
        problems = param_problems(kind, params, qd or 0, dd or 0)
        if isinstance(qd, int) and isinstance(dd, int):
            if qd + dd != in_dim:
                problems.append(f"hybrid in_dim ({in_dim}) != query_dim + document_dim ({qd + dd})")
            if dd != out_dim:
                problems.append(f"hybrid out_dim ({out_dim}) != document_dim ({dd})")
    else:
        problems = param_problems(kind, params, in_dim, out_dim)
    if kind == AdapterKind.IDENTITY and in_dim != out_dim:
        problems.append(f"identity adapter needs in_dim == out_dim (got {in_dim} and {out_dim})")
    if problems:
        raise ValueError("; ".join(problems))
    return resolve_params(kind, params)


def _param(shape: tuple, *, trainable: bool = True) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=torch.float32), requires_grad=trainable)


class AdapterModule(nn.Module):
    """Base: the kind, dims and params it was built with, parameters named as the tensors."""

    kind: AdapterKind

    def __init__(self, in_dim: int, out_dim: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.params = params

    def load_tensors(self, tensors: Init) -> None:
        """Copy numpy tensors (names and shapes as in the checkpoint) into the parameters."""
        own = dict(self.named_parameters())
        missing = sorted(own.keys() - tensors.keys())
        unexpected = sorted(tensors.keys() - own.keys())
        bad = [
            f"{k}: {tuple(np.shape(tensors[k]))} != {tuple(own[k].shape)}"
            for k in sorted(own.keys() & tensors.keys())
            if tuple(np.shape(tensors[k])) != tuple(own[k].shape)
        ]
        if missing or unexpected or bad:
            raise ValueError(
                f"{self.kind.value} init: missing {missing}, unexpected {unexpected}, "
                f"bad shapes {bad}"
            )
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(torch.as_tensor(np.asarray(tensors[k], dtype=np.float32)))


class _AffineModule(AdapterModule):
    def __init__(self, in_dim: int, out_dim: int, params: dict[str, Any]) -> None:
        super().__init__(in_dim, out_dim, params)
        self.weight = _param((out_dim, in_dim))
        self.bias = _param((out_dim,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LinearModule(_AffineModule):
    """y = x W^T + b (ERA's adapter)."""

    kind = AdapterKind.LINEAR


class HybridModule(_AffineModule):
    """y = [q; d] W^T + b: a linear map over the concatenated query- and document-model vectors."""

    kind = AdapterKind.HYBRID

    @property
    def query_dim(self) -> int:
        return int(self.params["query_dim"])

    @property
    def document_dim(self) -> int:
        return int(self.params["document_dim"])


class MLPModule(AdapterModule):
    """y = act(x W1^T + b1) W2^T + b2, one hidden layer."""

    kind = AdapterKind.MLP

    def __init__(self, in_dim: int, out_dim: int, params: dict[str, Any]) -> None:
        super().__init__(in_dim, out_dim, params)
        hidden = int(params["hidden"])
        self.activation = str(params["activation"])
        self.w1 = _param((hidden, in_dim))
        self.b1 = _param((hidden,))
        self.w2 = _param((out_dim, hidden))
        self.b2 = _param((out_dim,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.w1, self.b1)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return F.linear(h, self.w2, self.b2)


class LowRankModule(AdapterModule):
    """y = x W^T + b + (x D^T) U^T: a base map plus a rank-r residual.

    With `freeze_base` the base (weight, bias) is kept fixed (requires_grad False) and only
    down/up train; it is still exported, so the checkpoint is self-contained.
    """

    kind = AdapterKind.LOWRANK

    def __init__(
        self, in_dim: int, out_dim: int, params: dict[str, Any], *, freeze_base: bool = True
    ) -> None:
        super().__init__(in_dim, out_dim, params)
        rank = int(params["rank"])
        self.weight = _param((out_dim, in_dim), trainable=not freeze_base)
        self.bias = _param((out_dim,), trainable=not freeze_base)
        self.down = _param((rank, in_dim))
        self.up = _param((out_dim, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.down), self.up)


class IdentityModule(AdapterModule):
    kind = AdapterKind.IDENTITY

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_MODULES: dict[AdapterKind, type[AdapterModule]] = {
    AdapterKind.LINEAR: LinearModule,
    AdapterKind.HYBRID: HybridModule,
    AdapterKind.MLP: MLPModule,
    AdapterKind.LOWRANK: LowRankModule,
    AdapterKind.IDENTITY: IdentityModule,
}


def init_tensors(
    kind: AdapterKind | str,
    in_dim: int,
    out_dim: int,
    params: Mapping[str, Any] | None = None,
    *,
    base: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    mlp_out_scale: float = 0.1,
) -> dict[str, np.ndarray]:
    """The default starting point of each kind (see the module docstring), as float32 numpy.

    `base` = (weight [out, in], bias [out]) for linear and lowrank; refused for the others.
    """
    kind = AdapterKind(kind)
    p = _check(kind, in_dim, out_dim, params or {})
    rng = np.random.default_rng(seed)

    def torch_default(fan_out: int, fan_in: int) -> tuple[np.ndarray, np.ndarray]:
        # nn.Linear's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); same for bias
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in))
        b = rng.uniform(-bound, bound, fan_out)
        return w.astype(np.float32), b.astype(np.float32)

    if base is not None:
        if kind not in (AdapterKind.LINEAR, AdapterKind.LOWRANK):
            raise ValueError(f"a base map is only used by linear and lowrank, not {kind.value}")
        w, b = (np.asarray(a, dtype=np.float32) for a in base)
        if w.shape != (out_dim, in_dim) or b.shape != (out_dim,):
            raise ValueError(
                f"base has shapes {w.shape} and {b.shape}, expected {(out_dim, in_dim)} "
                f"and {(out_dim,)}"
            )
        base = (w.copy(), b.copy())

    if kind == AdapterKind.IDENTITY:
        return {}
    if kind == AdapterKind.LINEAR:
        w, b = base if base is not None else torch_default(out_dim, in_dim)
        return {"weight": w, "bias": b}
    if kind == AdapterKind.HYBRID:
        return hybrid_identity(int(p["query_dim"]), int(p["document_dim"]))
    if kind == AdapterKind.MLP:
        w1, b1 = torch_default(int(p["hidden"]), in_dim)
        w2, _ = torch_default(out_dim, int(p["hidden"]))
        return {
            "w1": w1,
            "b1": b1,
            "w2": (w2 * mlp_out_scale).astype(np.float32),
            "b2": np.zeros(out_dim, dtype=np.float32),
        }
    # lowrank
    if base is None:
        if in_dim != out_dim:
            raise ValueError(
                f"lowrank between different dims ({in_dim} -> {out_dim}) needs a base map"
            )
        base = (np.eye(out_dim, dtype=np.float32), np.zeros(out_dim, dtype=np.float32))
    rank = int(p["rank"])
    down = rng.standard_normal((rank, in_dim)) / np.sqrt(in_dim)
    return {
        "weight": base[0],
        "bias": base[1],
        "down": down.astype(np.float32),
        "up": np.zeros((out_dim, rank), dtype=np.float32),
    }


def hybrid_identity(query_dim: int, document_dim: int) -> dict[str, np.ndarray]:
    """weight = [0 | I], bias = 0: the hybrid's output is the document-model part of its input."""
    w = np.zeros((document_dim, query_dim + document_dim), dtype=np.float32)
    w[:, query_dim:] = np.eye(document_dim, dtype=np.float32)
    return {"weight": w, "bias": np.zeros(document_dim, dtype=np.float32)}


def identity_init(
    kind: AdapterKind | str,
    in_dim: int,
    out_dim: int,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Tensors that make the adapter an identity in its own sense (before normalisation).

    linear/lowrank (in == out): x -> x (lowrank: up = 0, down small random so it can learn);
    hybrid: [q; d] -> d; identity: no tensors. An mlp has no identity (no residual path).
    """
    kind = AdapterKind(kind)
    if kind == AdapterKind.MLP:
        raise ValueError("an mlp adapter has no identity initialisation")
    if kind in (AdapterKind.LINEAR, AdapterKind.LOWRANK):
        if in_dim != out_dim:
            raise ValueError(f"{kind.value} identity needs in_dim == out_dim")
        eye = (np.eye(out_dim, dtype=np.float32), np.zeros(out_dim, dtype=np.float32))
        return init_tensors(kind, in_dim, out_dim, params, base=eye, seed=seed)
    return init_tensors(kind, in_dim, out_dim, params, seed=seed)


def build_module(
    kind: AdapterKind | str,
    in_dim: int,
    out_dim: int,
    params: Mapping[str, Any] | None = None,
    init: Init | None = None,
    *,
    seed: int = 0,
    freeze_base: bool = True,
) -> AdapterModule:
    """An adapter module with `init` tensors (e.g. a checkpoint's), else `init_tensors(...)`.

    `freeze_base` applies to lowrank only (its weight/bias stay fixed; down/up train).
    """
    kind = AdapterKind(kind)
    p = _check(kind, in_dim, out_dim, params or {})
    cls = _MODULES[kind]
    if kind == AdapterKind.LOWRANK:
        module: AdapterModule = LowRankModule(in_dim, out_dim, p, freeze_base=freeze_base)
    else:
        module = cls(in_dim, out_dim, p)
    module.load_tensors(
        init if init is not None else init_tensors(kind, in_dim, out_dim, p, seed=seed)
    )
    return module


def build_module_for(
    manifest: Manifest, init: Init | None = None, *, seed: int = 0, freeze_base: bool = True
) -> AdapterModule:
    """`build_module` from a manifest (e.g. `build_module_for(a.manifest, a.tensors)`)."""
    return build_module(
        manifest.kind,
        manifest.in_dim,
        manifest.out_dim,
        manifest.params,
        init,
        seed=seed,
        freeze_base=freeze_base,
    )


def export_tensors(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's tensors under the checkpoint's names, float32 numpy on the CPU."""
    return {
        name: p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in module.named_parameters()
    }


def manifest_params(kind: AdapterKind | str, params: Mapping[str, Any] | None = None) -> dict:
    """The params to write into a manifest, the kind's defaults filled in (explicit is better)."""
    return resolve_params(AdapterKind(kind), dict(params or {}))
