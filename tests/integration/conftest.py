"""Integration fixtures: one embedded Tansu broker per test session, unique topic names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A started broker; fails (never skips) when the Tansu binary is missing.

    Its log stays in pytest's temp dir (printed in start-up errors) for post-mortems.
    """
    log_path = tmp_path_factory.mktemp("tansu") / "broker.log"
    with EmbeddedBroker(log_path=log_path) as started:
        yield started


@pytest.fixture
def topic_prefix() -> str:
    """Unique per test, so tests sharing the session broker never see each other's data."""
    return f"it-{uuid.uuid4().hex[:12]}-"
