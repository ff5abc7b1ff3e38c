"""The one hand-moved clock of the test suite (core, keys, KDS and broker tests)."""

from __future__ import annotations

T0 = 1_700_000_000.0  # a fixed "now"; whole seconds so that ms conversions are exact


class Clock:
    """A clock the test moves by hand: ``clock()`` reads it, ``clock.advance(s)`` moves it;
    ``clock.t`` (also ``clock.now``) is the time in seconds, ``clock.ms`` in milliseconds."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    @property
    def ms(self) -> int:
        return int(self.t * 1000)

    @property
    def now(self) -> float:
        return self.t

    @now.setter
    def now(self, value: float) -> None:
        self.t = value
