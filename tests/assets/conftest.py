"""Every test starts with an empty in-memory cache of step outputs (assets.steps.memo):
the cache is keyed by content, so without this a test that changes a step's computation
could be served another test's result for the same picture."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _empty_memo():
    from assets.steps.memo import MEMO

    MEMO.clear()
    yield
    MEMO.clear()
