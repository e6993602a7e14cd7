"""Building vLLM's real `AsyncLLM` (pooling runner) for a spec, and reading its outputs.

vLLM is imported only inside these functions, so the encoders import (and the tests run)
without it. Facts this relies on (vLLM's own source, the versions pinned in
`encoders.vllm_build`):
- `AsyncLLM.from_engine_args(AsyncEngineArgs(runner="pooling", ...))` builds the engine; the
  old `task="embed"` engine option is gone.
- `PoolingParams(task="embed")` must be passed on every request: without the task recent
  versions may answer with per-token states. `normalize` was replaced by `use_activation`.
- A request's output is a `PoolingRequestOutput` whose `.outputs.data` is a tensor (possibly
  bf16), or an `EmbeddingOutput` with `.embedding`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from encoders.base import EncoderSpec, Pooling, StepObserver
from encoders.vllm_build import accepted_builds, installed_vllm_build, resolve_dtype

log = logging.getLogger(__name__)

# vLLM's pooler names for our pooling modes.
_VLLM_POOLING = {Pooling.LAST: "LAST", Pooling.MEAN: "MEAN", Pooling.CLS: "CLS"}


def vllm_engine_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments for `spec` (the pooler config is added separately)."""
    return {
        "model": spec.path,
        "tokenizer": spec.path,
        "revision": spec.revision,
        "tokenizer_revision": spec.revision,
        "served_model_name": spec.name,
        "runner": "pooling",
        "dtype": resolve_dtype(spec),
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        # We never send more than max_tokens tokens, so a longer context only costs memory.
        "max_model_len": spec.max_model_len or spec.max_tokens,
        # The query instruction is a shared prefix: its KV blocks are reused across requests.
        # Only last-token pooling can use cached prefix blocks (mean/CLS need every state).
        "enable_prefix_caching": spec.pooling == Pooling.LAST,
        "seed": 0,
    }


def _step_logger_factory(observe: StepObserver) -> Any:
    """A vLLM per-engine stat logger that reports every engine step to `observe`.

    vLLM's own Prometheus logger writes to the process-global registry under `vllm:` names;
    this one feeds the service's `querylift_engine_*` metrics, which show whether concurrent
    requests really shared engine steps (the point of an in-process engine).
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if iteration_stats is None:
                return
            finished = len(getattr(iteration_stats, "finished_requests", ()) or ())
            tokens = int(getattr(iteration_stats, "num_prompt_tokens", 0) or 0)
            running = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
            if finished or tokens:
                try:
                    observe(finished, tokens, running)
                except Exception:  # a metrics fault must never stop the engine's output loop
                    log.warning("engine step observer failed", exc_info=True)

        def log_engine_initialized(self) -> None:
            pass

    return StepLogger


def build_vllm_engine(
    spec: EncoderSpec,
    *,
    allow_version_mismatch: bool = False,
    on_step: StepObserver | None = None,
) -> Any:
    """Build the real `AsyncLLM` (imports vLLM here, so this module imports without it)."""
    build = installed_vllm_build()
    if build is None:
        raise ImportError(
            f"the vllm backend needs vLLM, {accepted_builds()} "
            "(pip install 'querylift[gpu]' on CUDA, `make engine-cpu` on CPU)"
        )
    if not build.accepted:
        msg = (
            f"{build} is installed but querylift accepts {accepted_builds()}: adapters are "
            "trained on the pinned engine's exact outputs"
        )
        if not allow_version_mismatch:
            raise RuntimeError(msg + " (pass allow_version_mismatch=True to serve anyway)")
        log.warning(msg)
    from vllm.config import PoolerConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        **vllm_engine_kwargs(spec),
        pooler_config=PoolerConfig(pooling_type=_VLLM_POOLING[spec.pooling]),
    )
    log.info("starting %s engine for %s (%s)", build, spec.path, resolve_dtype(spec))
    loggers = [_step_logger_factory(on_step)] if on_step is not None else None
    return AsyncLLM.from_engine_args(args, stat_loggers=loggers)


def vllm_pooling_params(**kwargs: Any) -> Any:
    from vllm.pooling_params import PoolingParams

    return PoolingParams(**kwargs)


def as_vector(outputs: Any) -> np.ndarray:
    """`PoolingOutput.data` (a tensor, possibly bf16) or `EmbeddingOutput.embedding` -> f32."""
    data = getattr(outputs, "data", None)
    if data is None:
        data = getattr(outputs, "embedding", None)
    if data is None:
        raise TypeError(f"unexpected vLLM pooling output {type(outputs).__name__}")
    if hasattr(data, "detach"):  # torch.Tensor: numpy has no bf16, so convert in torch
        data = data.detach().float().cpu().numpy()
    return np.asarray(data, dtype=np.float32)
