"""GC_GEN0_THRESHOLD: what `gateway.runtime.tune_gc` does to the collector once a node serves."""

from __future__ import annotations

import gc

import pytest

from gateway.config import ConfigError, Settings
from gateway.runtime import tune_gc


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_start_up_objects_are_frozen_and_collections_are_rarer(restored_gc: None) -> None:
    kept = [object() for _ in range(100)]  # alive at "start": frozen with the rest
    tune_gc(12345)
    assert gc.get_threshold()[0] == 12345
    assert gc.get_freeze_count() >= len(kept)


def test_zero_leaves_python_alone(restored_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_setting_is_read_and_bounded() -> None:
    assert Settings.from_env({"AUTH_MODE": "none", "GC_GEN0_THRESHOLD": "50000"}).gc_gen0_threshold == 50000
    with pytest.raises(ConfigError):
        Settings.from_env({"AUTH_MODE": "none", "GC_GEN0_THRESHOLD": "-1"})
