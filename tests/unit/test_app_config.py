"""Settings that reach the worker's faust app as faust options."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.app import create_app
from stream.settings import Settings


def test_no_standby_replicas_unless_asked(tmp_path: Path) -> None:
    """faust's default is 1; each copy replays every history write of another worker."""
    assert Settings().standby_replicas == 0
    assert create_app(Settings(data_dir=tmp_path / "data")).app.conf.table_standby_replicas == 0


@pytest.mark.parametrize("replicas", [1, 2])
def test_standby_replicas_reach_faust(tmp_path: Path, replicas: int) -> None:
    settings = Settings(data_dir=tmp_path / "data", standby_replicas=replicas)
    assert create_app(settings).app.conf.table_standby_replicas == replicas
