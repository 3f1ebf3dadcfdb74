"""Fault injection for tests and drills: make a named point fail for matching files.

The environment variable ``SEP_FAULTS`` lists faults as ``point:pattern`` pairs
separated by ``;``, for example ``decode_hang:*stuck*;decode_crash:*boom.wav``. The
point names a place and an action (``<place>_<action>``); the pattern is a
shell-style glob matched against the file's name (URI or path). Code calls
:func:`maybe_fire` with its place and the file name; nothing happens unless a fault
for that place matches. Places: ``decode`` (the decoding child of
:mod:`sepcore.io.decode`) and ``item`` (the start of every per-item unit of the batch
jobs, inside its time limit: ``ray_jobs.common.ItemTasks`` and ``sepcore.batch.ItemWatchdog``; the
name is the item's: a track id, a song's or a file's URI). Actions:

* ``raise``: raise :class:`InjectedFault`;
* ``hang``: sleep (far longer than any timeout);
* ``crash``: kill the process with ``SIGSEGV``, as a native decoder bug would;
* ``oom``: allocate memory until the allocation fails (``MemoryError`` under a limit).

Unset (the default) costs one environment lookup.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import time

ENV = "SEP_FAULTS"
ACTIONS = ("raise", "hang", "crash", "oom")


class InjectedFault(RuntimeError):
    """The error the ``raise`` action raises."""


def active(place: str, name: str) -> str | None:
    """The action configured for ``place`` that matches ``name``, or None."""
    spec = os.environ.get(ENV, "")
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        point, _, pattern = item.partition(":")
        where, _, action = point.rpartition("_")
        if where == place and action in ACTIONS and fnmatch.fnmatch(name, pattern or "*"):
            return action
    return None


def maybe_fire(place: str, name: str) -> None:
    """Carry out the fault configured for ``place`` and ``name``, if any."""
    action = active(place, name)
    if action == "raise":
        raise InjectedFault(f"injected fault at {place} for {name}")
    if action == "hang":
        time.sleep(3600.0)
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 28))
