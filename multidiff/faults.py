"""Fault injection for the crash-recovery tests: signal this process at a named point.

``MULTIDIFF_FAULT=POINT[:STEP[:SIGNAL]]`` (e.g. ``checkpoint:20``, ``eval``, ``step:13``,
``quality:10:TERM``) sends SIGKILL (or the named signal) to the process when it reaches POINT (at
training step STEP, if given). Unset, every call is a dict lookup. The points: ``step`` (after an
optimizer step), ``checkpoint`` (a checkpoint written to its temporary file, not yet renamed),
``validation`` (a periodic evaluation under way, its metrics not yet logged), ``quality`` (a sample
quality evaluation during training has started), ``eval`` (final samples written, eval.json not yet).
"""
from __future__ import annotations

import os
import signal
from typing import Optional


def point(name: str, step: Optional[int] = None) -> None:
    spec = os.environ.get("MULTIDIFF_FAULT")
    if not spec:
        return
    want, _, rest = spec.partition(":")
    at, _, sig = rest.partition(":")
    if want == name and (not at or (step is not None and int(at) == int(step))):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
