"""When the processing thread next needs data: a hint a source may use to batch its work.

Why: on this VM each wake-up of a Python thread that does a little work every ~10 ms costs
about ten times what the same work costs in a tight loop (benches/RESULTS.md, "where the
daemon's CPU goes"). The serial thread must read its port every ~10 ms (at 4 x 25.6 kHz the
tty buffer holds about 20 ms), but decoding and assembling the bytes can wait: nothing
downstream uses the blocks before the next window can complete. The processing thread
(Agent._gather) publishes that moment here; a source that batches keeps the bytes it read,
each with the time it was read, and decodes them in one go when the moment is near, when it
has held them ``HOLD_MAX_S``, or when it has something else to answer. The blocks carry the
read time, so a window's completion, and the alert latency measured from it, is still the
moment its bytes reached the gateway.
"""
from __future__ import annotations

GUARD_S = 0.02  # decode everything from this long before the window is due (a frame or two early)
HOLD_MAX_S = 0.2  # never hold bytes longer (counters, the no-data check and replies stay fresh)


class Pace:
    """``due_at``: time.time() when the next window can complete; 0 while unknown (start-up,
    a backlog being worked off), when nothing may be held. Written by the processing thread,
    read by sources: one float, no lock needed."""

    def __init__(self) -> None:
        self.due_at = 0.0

    def hold_until(self, held_since: float) -> float:
        """The time (time.time()) until which bytes read at ``held_since`` may stay undecoded;
        at or before ``held_since`` when they may not be held at all."""
        due = self.due_at
        if due <= 0.0:
            return held_since
        return min(due - GUARD_S, held_since + HOLD_MAX_S)
