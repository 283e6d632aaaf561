"""A converter that dies mid-run, for the writer's crash and resume tests."""

from __future__ import annotations

from converters.text import TextConverter


class CrashingText(TextConverter):
    """The text converter, dying (like a killed process) when it reaches unit `crash_at`."""

    crash_at: str = ""

    def convert_unit(self, unit):
        if unit.key == self.crash_at:
            raise RuntimeError("simulated crash")
        yield from super().convert_unit(unit)


