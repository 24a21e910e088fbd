from musicbot.core.pacing import FrameWindow


def test_counts_what_happened_in_the_last_minute_only() -> None:
    window = FrameWindow(60)
    window.record(0.5, sent=50)
    window.record(30.2, sent=40, missed=10)
    assert window.totals(30.9) == (90, 10)
    assert window.totals(59.99) == (90, 10)
    assert window.totals(60.0) == (40, 10)  # second 0 left the window
    window.record(90.0, sent=5)  # reuses the slot of second 30
    assert window.totals(90.5) == (5, 0)
    assert window.totals(1000.0) == (0, 0)


def test_memory_is_flat() -> None:
    window = FrameWindow(60)
    for k in range(100_000):
        window.record(k * 0.02, sent=1)
    assert window.totals(1999.99) == (50 * 60, 0)
    assert len(window._sent) == 60
