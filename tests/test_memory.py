"""HeapKeeper: the cyclic collector's freezing, and glibc's malloc_trim, for real."""

from __future__ import annotations

import gc
import platform
import weakref

import pytest

from musicbot.memory import HeapKeeper

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; elsewhere it is a no-op"
)


class Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@glibc
def test_free_heap_in_the_middle_of_live_data_is_given_back() -> None:
    keeper = HeapKeeper()
    assert keeper.can_trim
    keeper.trim()  # start from a trimmed heap
    # 64 KiB blocks come from the heap, not mmap; freeing every other one leaves holes that
    # glibc keeps resident: the fragmentation a long-running bot accumulates.
    blocks = [bytearray(b"x" * 65536) for _ in range(800)]
    del blocks[::2]
    released = keeper.trim()
    assert released >= 10 * 2**20  # 400 holes of 64 KiB: 25 MiB, most of it whole pages
    assert len(blocks) == 400 and all(block[-1] == ord("x") for block in blocks)


def test_without_malloc_trim_it_gives_back_nothing() -> None:
    keeper = HeapKeeper()
    keeper._trim = None
    assert not keeper.can_trim
    assert keeper.trim() == 0


def test_what_lives_long_is_left_out_of_collections_until_the_sweep() -> None:
    keeper = HeapKeeper()
    with keeper.kept():
        assert gc.get_freeze_count() > 0  # start-up's objects
        joined = Cycle()
        kept_by_connection = weakref.ref(joined)
        keeper.settle()  # a voice connection was made: what it holds is frozen too
        del joined  # the connection ends; a frozen cycle waits for the sweep
        young = Cycle()
        young_ref = weakref.ref(young)
        del young
        gc.collect()
        assert young_ref() is None  # not frozen: collected as usual
        assert kept_by_connection() is not None
        keeper.sweep()
        assert kept_by_connection() is None
        assert gc.get_freeze_count() > 0  # and frozen again
    assert gc.get_freeze_count() == 0


def test_outside_kept_it_freezes_nothing() -> None:
    keeper = HeapKeeper()
    keeper.settle()
    keeper.sweep()
    assert gc.get_freeze_count() == 0
