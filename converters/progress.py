"""A tqdm bar on stderr that counts records and shows tokens/s, fed from any number of workers."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """Records as the bar's count; tokens/s and finished units in the postfix."""

    def __init__(self, desc: str, units: int, enabled: bool = True):
        self.start = time.perf_counter()
        self.tokens = 0
        self.units_total = units
        self.units_done = 0
        self._last_postfix = 0.0
        self.bar = tqdm(desc=desc, unit="rec", file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                        mininterval=0.5, leave=False)

    def update(self, records: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(records)
        now = time.perf_counter()
        if now - self._last_postfix > 0.5:
            self._postfix(now)

    def unit_done(self) -> None:
        self.units_done += 1
        self._postfix(time.perf_counter())

    def _postfix(self, now: float) -> None:
        self._last_postfix = now
        rate = self.tokens / max(now - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s, units {self.units_done}/{self.units_total}", refresh=False)

    def close(self) -> None:
        self.bar.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
