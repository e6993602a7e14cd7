"""Adapter architectures, the checkpoint format and the on-disk store (no service, no training)."""

from adapters.apply import apply_grouped
from adapters.checkpoint import Adapter, CheckpointError, load_checkpoint, save_checkpoint
from adapters.manifest import AdapterKind, Manifest, ModelInfo

__all__ = [
    "Adapter",
    "AdapterKind",
    "CheckpointError",
    "Manifest",
    "ModelInfo",
    "apply_grouped",
    "load_checkpoint",
    "save_checkpoint",
]
