"""QUERYLIFT_TORCH_SPIN_COUNT: reaches libgomp when set before torch loads, yields to the
operator's own libgomp variables, and says so when it comes too late."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from service.ops.cpu import apply_spin_count
from service.ops.settings import Settings
from tests.conftest import REPO


def test_the_setting_becomes_gomp_spincount(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in `serve`, before torch
    env: dict[str, str] = {}
    assert apply_spin_count(Settings(torch_spin_count=10_000), env) == "10000"
    assert env == {"GOMP_SPINCOUNT": "10000"}


@pytest.mark.parametrize("key", ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"])
def test_the_operators_libgomp_variable_wins(key):
    env = {key: "passive" if key == "OMP_WAIT_POLICY" else "5"}
    assert apply_spin_count(Settings(torch_spin_count=10_000), env) is None
    assert env == {key: env[key]}


def test_unset_leaves_libgomps_default():
    env: dict[str, str] = {}
    assert apply_spin_count(Settings(torch_spin_count=None), env) is None
    assert env == {}


def test_too_late_is_said_not_pretended(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    env: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="service.ops.cpu"):
        assert apply_spin_count(Settings(torch_spin_count=10_000), env) is None
    assert env == {}
    assert "not applied" in caplog.text and "GOMP_SPINCOUNT" in caplog.text


_BURN = textwrap.dedent(
    """
    import os, sys, time
    from service.ops.cpu import apply_spin_count
    from service.ops.settings import Settings
    os.environ.pop("GOMP_SPINCOUNT", None); os.environ.pop("OMP_WAIT_POLICY", None)
    apply_spin_count(Settings(torch_spin_count=int(sys.argv[1])))
    import torch
    torch.set_num_threads(2)
    x = torch.randn(256, 256)
    for _ in range(20):
        x = torch.tanh(x @ x)
    t0 = time.process_time()
    time.sleep(0.3)  # nothing for the workers to do: what they burn now is spinning
    print(time.process_time() - t0)
    """
)


def _idle_cpu_s(spin: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _BURN, str(spin)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_libgomp_reads_it_when_serve_applies_it():
    """A spin count set the way `querylift serve` sets it changes what torch's idle workers
    burn: 0 sleeps at once, a huge count spins through the whole idle 0.3 s."""
    assert _idle_cpu_s(0) < 0.1
    assert _idle_cpu_s(10**10) > 0.2
