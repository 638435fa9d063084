import gc
import weakref

import pytest

from stream.gc_schedule import FULL_EVERY, Collector, collect_on_schedule


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def restore_the_collector():
    yield
    gc.unfreeze()
    gc.enable()


@pytest.fixture
def generations():
    """The generation of every collection that starts while the test runs."""
    started: list[int] = []

    def note(phase, info):
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(note)
    yield started
    gc.callbacks.remove(note)


def cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_allocations_no_longer_trigger_collections(generations):
    collect_on_schedule()
    kept = [[index] for index in range(100_000)]  # far past any allocation threshold
    assert generations == []
    assert len(kept) == 100_000


def test_a_scheduled_collection_frees_cycles_made_since():
    collect_on_schedule()
    garbage = cycle()
    assert garbage() is not None  # nothing collected it on allocation
    assert Collector().collect() >= 2
    assert garbage() is None


def test_every_generation_is_collected_every_full_every_th_time(generations):
    collect_on_schedule()
    collector = Collector()
    for _ in range(2 * FULL_EVERY):
        collector.collect()
    full = [0] * (FULL_EVERY - 1) + [2]
    assert generations == full + full


def test_objects_alive_at_the_start_are_out_of_every_collection():
    survivor = Node()
    collect_on_schedule()
    later = Node()
    tracked = gc.get_objects()  # the generations a collection walks, not the frozen
    assert not any(found is survivor for found in tracked)
    assert any(found is later for found in tracked)
    assert not gc.isenabled()
