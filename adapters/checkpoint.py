"""Checkpoint = folder with `adapter.safetensors` + `manifest.json` (no pickle anywhere)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from adapters.fsutil import atomic_publish_dir
from adapters.kinds import KINDS, forward
from adapters.manifest import Manifest, ManifestInconsistent

TENSORS_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that must not be served; `reasons` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Adapter:
    """A validated, immutable adapter version."""

    id: str
    manifest: Manifest
    tensors: dict[str, np.ndarray] = field(repr=False)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return forward(self.manifest, self.tensors, x)

    @property
    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors.values())


def content_id(tensor_bytes: bytes, manifest: Manifest) -> str:
    """Identity = tensors + what the manifest says about them (labels and timestamps excluded)."""
    body = manifest.model_dump(mode="json", exclude={"created_at", "name", "tensors_sha256"})
    h = hashlib.sha256(hashlib.sha256(tensor_bytes).digest())
    h.update(json.dumps(body, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _manifest_reasons(err: ValidationError) -> list[str]:
    reasons: list[str] = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, ManifestInconsistent):
            reasons.extend(f"manifest: {p}" for p in cause.problems)
            continue
        loc = ".".join(str(p) for p in e["loc"])
        reasons.append(f"manifest: {loc}: {e['msg']}" if loc else f"manifest: {e['msg']}")
    return reasons


def _claimed_sha256(manifest: Manifest | None, manifest_bytes: bytes) -> str:
    """The tensor hash the manifest claims, read leniently when the manifest itself is invalid."""
    if manifest is not None:
        return manifest.tensors_sha256
    try:
        raw = json.loads(manifest_bytes)
    except ValueError:
        return ""
    claimed = raw.get("tensors_sha256") if isinstance(raw, dict) else None
    return claimed if isinstance(claimed, str) else ""


def parse_checkpoint(tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter:
    """Validate raw checkpoint bytes; raises CheckpointError listing every reason.

    A broken manifest does not stop the tensor file from being checked: the hash, the
    file's readability and the finiteness of its values are reported too.
    """
    reasons: list[str] = []
    manifest: Manifest | None = None
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as e:
        reasons.extend(_manifest_reasons(e))
    digest = hashlib.sha256(tensor_bytes).hexdigest()
    claimed = _claimed_sha256(manifest, manifest_bytes)
    if claimed and claimed != digest:
        reasons.append(
            f"tensors_sha256 mismatch: manifest says {claimed[:12]}..., file is {digest[:12]}..."
        )
    tensors: dict[str, np.ndarray] = {}
    try:
        tensors = st_load(tensor_bytes) if tensor_bytes else {}
    except Exception as e:  # safetensors raises its own error types
        reasons.append(f"{TENSORS_FILE}: unreadable ({e})")
    expected = KINDS[manifest.kind].shapes(manifest) if manifest is not None else {}
    for name, t in sorted(tensors.items()):
        if not np.issubdtype(t.dtype, np.floating):
            reasons.append(f"tensor {name!r} has dtype {t.dtype}, expected floating point")
        elif not np.isfinite(t).all():
            reasons.append(f"tensor {name!r} has non-finite values")
    if manifest is not None:
        kind = manifest.kind.value
        for name, shape in expected.items():
            t = tensors.get(name)
            if t is None:
                reasons.append(f"tensor {name!r} missing (kind {kind})")
            elif tuple(t.shape) != shape:
                reasons.append(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        for name in sorted(tensors.keys() - expected.keys()):
            reasons.append(f"unexpected tensor {name!r} for kind {kind}")
    if reasons or manifest is None:
        raise CheckpointError(reasons or ["manifest: invalid"])
    manifest = manifest.model_copy(update={"tensors_sha256": digest})
    clean = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return Adapter(content_id(tensor_bytes, manifest), manifest, clean)


def load_checkpoint(path: Path) -> Adapter:
    path = Path(path)
    missing = [n for n in (TENSORS_FILE, MANIFEST_FILE) if not (path / n).is_file()]
    if missing:
        raise CheckpointError([f"{path}: missing {n}" for n in missing])
    return parse_checkpoint((path / TENSORS_FILE).read_bytes(), (path / MANIFEST_FILE).read_bytes())


def serialize(manifest: Manifest, tensors: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """Return (tensor bytes, manifest bytes) with the tensor hash filled in."""
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    # always a real safetensors file, even with no tensors (identity): never a 0-byte file
    tensor_bytes = st_save(arrays, metadata={"format": "querylift-adapter"})
    manifest = manifest.model_copy(
        update={"tensors_sha256": hashlib.sha256(tensor_bytes).hexdigest()}
    )
    return tensor_bytes, manifest.model_dump_json(indent=2).encode()


def save_checkpoint(path: Path, manifest: Manifest, tensors: dict[str, np.ndarray]) -> Adapter:
    """Validate, then write atomically: the folder appears whole or not at all."""
    tensor_bytes, manifest_bytes = serialize(manifest, tensors)
    adapter = parse_checkpoint(tensor_bytes, manifest_bytes)
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; checkpoints are immutable")
    publish_checkpoint(path, tensor_bytes, manifest_bytes, staging_prefix=f".{path.name}.")
    return adapter


def publish_checkpoint(
    final: Path, tensor_bytes: bytes, manifest_bytes: bytes, staging_prefix: str
) -> None:
    """Write both files into a hidden staging folder beside `final`, then rename it whole."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=staging_prefix))
    try:
        (staging / TENSORS_FILE).write_bytes(tensor_bytes)
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        atomic_publish_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
