"""Process-wide CPU settings that must be in place before torch loads."""

from __future__ import annotations

import logging
import os
import sys

from service.ops.settings import Settings

log = logging.getLogger(__name__)

# libgomp reads these once, when torch first loads it; either one set by the operator wins
_OPERATOR_KEYS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def apply_spin_count(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """Put `QUERYLIFT_TORCH_SPIN_COUNT` into the environment as `GOMP_SPINCOUNT`.

    Returns what was set, or None where nothing was: the setting is unset, the operator set
    libgomp's own variable, or torch is already loaded (too late to matter: said in a log
    line rather than pretended)."""
    env = os.environ if environ is None else environ
    count = settings.torch_spin_count
    if count is None or any(k in env for k in _OPERATOR_KEYS):
        return None
    if "torch" in sys.modules:
        log.warning(
            "QUERYLIFT_TORCH_SPIN_COUNT=%d not applied: torch was loaded before the setting "
            "was read (set GOMP_SPINCOUNT in the environment instead)",
            count,
        )
        return None
    env["GOMP_SPINCOUNT"] = str(count)
    return env["GOMP_SPINCOUNT"]
