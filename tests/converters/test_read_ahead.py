"""read_ahead: the robot readers' episodes produced in a thread; same items, order and errors as
reading in line, bounded memory, and an early stop closes the reader (its open files) and the thread."""

from __future__ import annotations

import threading
import time

import pytest

from converters.read_ahead import read_ahead


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_same_items_in_order_and_the_thread_ends():
    assert list(read_ahead(iter_gen(range(50)))) == list(range(50))
    assert not _threads()


def iter_gen(items, log=None, fail_at=None):
    try:
        for i in items:
            if i == fail_at:
                raise ValueError(f"bad record {i}")
            if log is not None:
                log.append(("made", i, threading.current_thread().name))
            yield i
    finally:
        if log is not None:
            log.append(("closed", threading.current_thread().name))


def test_an_error_reaches_the_consumer_after_the_items_before_it():
    got = []
    with pytest.raises(ValueError, match="bad record 3"):
        for i in read_ahead(iter_gen(range(10), fail_at=3)):
            got.append(i)
    assert got == [0, 1, 2]
    assert not _threads()


def test_at_most_depth_plus_two_items_exist_and_an_early_stop_closes_the_reader_in_its_thread():
    log: list = []
    it = read_ahead(iter_gen(range(100), log), depth=1)
    assert next(it) == 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(log) < 3:
        time.sleep(0.01)
    time.sleep(0.2)  # a producer that ignored the bound would have gone on by now
    made = [e for e in log if e[0] == "made"]
    assert len(made) == 3  # consumed, waiting, being handed over
    assert {e[2] for e in made} == {"read-ahead"}
    it.close()
    assert log[-1] == ("closed", "read-ahead")
    assert not _threads()
