"""Reading the step-indexed files a run directory accumulates (metrics.csv, the schedule history),
with a one-line error naming the file and line when one is damaged."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Optional

from .errors import UserError

_SNAPSHOT = re.compile(r"^step(\d{7})(\.[A-Za-z0-9_-]+)?\.json$")  # stepNNNNNNN.json, stepNNNNNNN.<modality>.json


def read_step_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file with a ``step`` column: its header and (step, row) pairs, every step checked."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            if "step" not in fields:
                raise UserError(f"run file {path} is damaged: no 'step' column in its header; delete it or restore it")
            rows = []
            for row in reader:
                step = _step(row.get("step"))
                if step is None or None in row:  # None key: more fields than the header names
                    raise UserError(f"run file {path} is damaged at line {reader.line_num}; delete that line or restore the file")
                rows.append((step, row))
    except UnicodeDecodeError:
        raise UserError(f"run file {path} is damaged (not UTF-8 text); delete it or restore it") from None
    except csv.Error as exc:
        raise UserError(f"run file {path} is damaged ({exc}); delete it or restore it") from None
    return fields, rows


def _step(text: Optional[str]) -> Optional[int]:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 0 and value == int(value) else None


def snapshot_step(name: str) -> Optional[int]:
    """The step of a schedule-history snapshot's file name; None for a file that is not one."""
    match = _SNAPSHOT.match(name)
    return int(match.group(1)) if match else None
