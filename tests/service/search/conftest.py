"""The conformance suite: every test here runs on each vector engine (tests/conftest.py ENGINES),
with the same expected answers."""

from __future__ import annotations

import pytest

from tests.conftest import ENGINES


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)
