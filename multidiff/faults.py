"""Fault injection for the crash-recovery tests: kill this process at a named point.

``MULTIDIFF_FAULT=POINT[:STEP]`` (e.g. ``checkpoint:20``, ``eval``, ``step:13``) sends SIGKILL to
the process when it reaches POINT (at training step STEP, if given). Unset, every call is a dict
lookup. The points: ``step`` (after an optimizer step), ``checkpoint`` (a checkpoint written to its
temporary file, not yet renamed), ``validation`` (a periodic evaluation under way, its metrics not
yet logged), ``eval`` (final samples written, eval.json not yet).
"""
from __future__ import annotations

import os
import signal
from typing import Optional


def point(name: str, step: Optional[int] = None) -> None:
    spec = os.environ.get("MULTIDIFF_FAULT")
    if not spec:
        return
    want, _, at = spec.partition(":")
    if want == name and (not at or (step is not None and int(at) == int(step))):
        os.kill(os.getpid(), signal.SIGKILL)
