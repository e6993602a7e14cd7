"""The fingerprint of the model an encoder really runs, the key of every vector cache.

A spec's name is only a label: the Makefile's `QWEN3=` (and any retrained model copied over
the old folder) puts other weights under the same name, and a cache keyed by the name would
hand out the old model's vectors. So the fingerprint digests what decides a vector: the
spec's vector fields (name, backend, the dtype it really runs in, pooling, templates,
default instruction, max tokens, normalisation, the upstream of an HTTP encoder) and the
identity of the weights:

- a local folder: the content of config.json, the tokenizer files and the safetensors index;
  each weight file's name and size; each safetensors file's header and the first bytes of
  every tensor (so a retrained model of the same shapes differs too); the head and tail of a
  `*.bin`/`*.pt` (a torch zip ends with the CRC-32 of every tensor). Never the tensor data
  itself: a few MB read for an 8B model.
- a hub id (no such local folder): the id and revision only. Without a pinned revision the
  hub's newest weights can change under the same key: pin one where caches matter.

The folder's path is left out: the same model at two mount points shares its caches. The
digest is computed once per folder state in a process (keyed by the files' sizes and
modification times, one `stat` each), so asking again is cheap and a change is seen. The
backends ask once when they load, so no request (on the event loop) reads the headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from hashlib import _Hash

    from encoders.base import EncoderSpec

# Read whole: small, and they change vectors (architecture, positions, token ids).
_CONTENT_FILES = (
    "config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_CONTENT_LIMIT = 64 << 20  # a larger "content" file is identified by its size alone
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TENSOR_SAMPLE = 4096  # bytes read at the start of each safetensors tensor (one page)
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the header
_HEAD = 4096  # bytes read at the start of a .bin/.pt
_TAIL = 1 << 20  # ... and at its end (a torch zip's central directory, with CRC-32s)

_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_cache_lock = threading.Lock()


def spec_fingerprint(spec: EncoderSpec) -> str:
    """16 hex digits over the spec's vector fields and its weights' identity."""
    fields: dict[str, object] = {
        k: str(getattr(spec, k))
        for k in (
            "name",
            "backend",
            "revision",
            "pooling",
            "query_template",
            "document_template",
            "default_instruction",
            "max_tokens",
            "normalize",
        )
    }
    fields["dtype"] = effective_dtype(spec)
    if spec.backend == "vllm":
        fields["max_model_len"] = spec.max_model_len  # caps the tokens the engine sees
    if spec.backend == "openai_http":  # the vectors come from the upstream's model
        fields["upstream"] = [spec.url, spec.upstream_model or spec.name]
    fields["weights"] = weights_identity(spec.path, spec.revision)
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def effective_dtype(spec: EncoderSpec) -> str:
    """The dtype the vectors are computed in: `auto` resolved as the backend resolves it."""
    if spec.backend == "openai_http":
        return "upstream"
    if spec.dtype != "auto":
        return spec.dtype
    if spec.backend == "vllm":
        from encoders.vllm_build import VLLM_DTYPE

        return VLLM_DTYPE
    # transformers: bfloat16 on CUDA, float32 elsewhere (transformers_backend.py)
    return "bfloat16" if spec.device.split(":")[0] == "cuda" else "float32"


def weights_identity(path: str, revision: str | None = None) -> str:
    """A digest of the model in folder `path`, or `hub:<id>@<revision>` when there is none."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"hub:{path}@{revision}"
    files = _identity_files(folder)
    key = (str(folder.resolve()), tuple((p.name, *_stat(p)) for p in files))
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    digest = _digest(files)
    with _cache_lock:
        _cache[key] = digest
    return digest


def _identity_files(folder: Path) -> list[Path]:
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        named = entry.name in _CONTENT_FILES or entry.name.endswith(_WEIGHT_SUFFIXES)
        if named and entry.is_file():  # follows links (the hub cache's snapshots are links)
            out.append(Path(entry.path))
    return out


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            if path.name in _CONTENT_FILES:
                if size <= _CONTENT_LIMIT:
                    h.update(f.read())
            elif path.suffix == ".safetensors":
                _safetensors_identity(f, size, h)
            else:
                _head_and_tail(f, size, h)
    return "local:" + h.hexdigest()


def _safetensors_identity(f: BinaryIO, size: int, h: _Hash) -> None:
    """The header (names, dtypes, shapes, offsets) and the first bytes of every tensor."""
    raw = f.read(8)
    n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
    if not 0 < n <= min(_HEADER_LIMIT, size - 8):
        _head_and_tail(f, size, h)  # not a readable safetensors file: still some identity
        return
    header = f.read(n)
    h.update(header)
    try:
        tensors = json.loads(header)
    except ValueError:
        _head_and_tail(f, size, h)
        return
    starts = sorted(
        {
            int(t["data_offsets"][0])
            for name, t in tensors.items()
            if name != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
        }
    )
    for start in starts:
        h.update(os.pread(f.fileno(), _TENSOR_SAMPLE, 8 + n + start))


def _head_and_tail(f: BinaryIO, size: int, h: _Hash) -> None:
    h.update(os.pread(f.fileno(), _HEAD, 0))
    if size > _HEAD:
        tail = min(_TAIL, size - _HEAD)
        h.update(os.pread(f.fileno(), tail, size - tail))
