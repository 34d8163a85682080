"""Reloads without a gap: old workers serve until the new ones do."""

from __future__ import annotations

import mmap
import struct


class Handover:
    """What the workers of one gunicorn master share about a reload (``SIGHUP``) under way.

    gunicorn reloads by starting new workers and sending ``SIGTERM`` to the old ones at once,
    so nothing accepts connections until the new workers have imported the app: seconds on a
    loaded machine, longer than the provider waits. The master notes here, before it starts the
    new workers, which ages (gunicorn numbers its workers in order) are old and how many new
    ones it starts (:meth:`begin`, from the configuration's ``on_reload`` hook). Each new worker
    counts itself once it serves (:meth:`ready`), and an old worker told to stop goes on
    serving while :meth:`waiting` says it should.

    Created at import, in the master, before any worker is forked: an anonymous shared
    mapping, the same memory in the master and all its workers (no file, no semaphore). The
    master writes the reload's numbers; each new worker writes only its own byte; a signal
    handler may read. A reload of more new workers than there are bytes is not waited for.
    """

    _HEAD = struct.Struct("qq")  # the last old worker's age, how many new workers

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS
        self._slots = mmap.PAGESIZE - self._HEAD.size

    def begin(self, last_old_age: int, new_workers: int) -> None:
        """In the master: workers up to ``last_old_age`` are old; ``new_workers`` will start."""
        expected = new_workers if new_workers <= self._slots else 0
        self._HEAD.pack_into(self._memory, 0, 0, 0)  # no reload while the slots are cleared
        self._memory[self._HEAD.size:self._HEAD.size + expected] = bytes(expected)
        self._HEAD.pack_into(self._memory, 0, last_old_age, expected)

    def ready(self, age: int) -> None:
        """In a worker that serves: mark it if it is one of the reload's new workers."""
        boundary, expected = self._HEAD.unpack_from(self._memory, 0)
        if boundary < age <= boundary + expected:
            self._memory[self._HEAD.size + age - boundary - 1] = 1

    def waiting(self, age: int) -> bool:
        """Whether the worker of ``age`` is an old one whose replacements do not all serve."""
        boundary, expected = self._HEAD.unpack_from(self._memory, 0)
        return (age <= boundary and expected > 0
                and 0 in self._memory[self._HEAD.size:self._HEAD.size + expected])


#: The one of this process (a gunicorn master and its workers).
handover = Handover()
