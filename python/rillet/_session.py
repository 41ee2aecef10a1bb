"""The process-wide default session and its settings."""

from __future__ import annotations

from rillet import _rillet

_current: "SessionHandle | None" = None


class SessionHandle:
    """Engine settings shared by the DataFrames built after it was set."""

    def __init__(self, memory_budget: int | None = None, parallelism: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None,
                 spill_budget: int | None = None):
        self._native = _rillet.Session(memory_budget=memory_budget, parallelism=parallelism,
                                       batch_size=batch_size, progress=progress,
                                       spill_budget=spill_budget)

    @property
    def parallelism(self) -> int:
        return self._native.parallelism

    @property
    def memory_budget(self) -> int:
        return self._native.memory_budget

    def __repr__(self) -> str:
        return f"Session(parallelism={self.parallelism}, memory_budget={self.memory_budget})"


def current_session() -> SessionHandle:
    """The default session (created on first use)."""
    global _current
    if _current is None:
        _current = SessionHandle()
    return _current


def set_config(*, memory_budget: int | None = None, parallelism: int | None = None,
               batch_size: int | None = None, progress: bool | None = None,
               spill_budget: int | None = None) -> SessionHandle:
    """Replace the default session's settings for DataFrames built from now on.

    ``memory_budget`` is in bytes (default: 1/16 of the memory the process may use, its
    cgroup's limit or the machine's, between 512 MiB and 4 GiB): half bounds the data
    queued between operators, half the data held inside operator calls (decoded images,
    audio and frames count against it, and a call that does not fit waits for running ones
    to finish). ``parallelism`` is the number of tasks per operator (default: cores).
    ``progress=False`` turns off the live terminal display (also ``RILLET_PROGRESS=0``).
    ``spill_budget`` (bytes, default 0: off) lets a producer facing a full channel write a
    large batch (1 MiB or more) to the job's spill directory and pass it on by reference
    instead of waiting; the consumer reads it back, and the directory (under
    ``RILLET_SPILL_DIR``, default the temporary directory) is deleted when the job ends.

    >>> import rillet as rl
    >>> rl.set_config(parallelism=2).parallelism
    2
    """
    global _current
    _current = SessionHandle(memory_budget, parallelism, batch_size, progress, spill_budget)
    return _current
