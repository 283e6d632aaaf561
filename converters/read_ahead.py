"""An iterator run in a thread, a bounded number of items ahead of its consumer.

The robot readers spend their time in decoders that release the GIL (PyAV's decode and swscale,
simplejpeg), so the next episode can decode while this one is tokenised; a unit's next record batch
is built the same way while its writer compresses, hashes and fsyncs the current one (Arrow and
hashlib release the GIL too). Nothing about the items changes: same items, same order, an exception
raised where the consumer reaches it.
"""

from __future__ import annotations

import queue
import threading
from typing import Generator, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(items: Generator[T, None, None], depth: int = 1) -> Iterator[T]:
    """`items` produced in a thread, at most `depth` finished items waiting (so memory holds
    depth + 2 items: waiting, being produced, being consumed). Closing the result (or leaving it
    by an exception) stops the thread at its next item and closes `items` in it."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((None, e))
        finally:
            items.close()  # the generator's own finally (its open files) runs in this thread

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
