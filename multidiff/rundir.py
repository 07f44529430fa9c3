"""A run directory's layout, in one place: every other module asks :class:`RunDir` for a path or a
file's content instead of spelling a file name.

::

    RUN/recipe.yaml                      the resolved recipe the run was trained with
    RUN/checkpoints/stepNNNNNNN.ckpt     a checkpoint per checkpoint_every steps and at the end
    RUN/checkpoints/last.ckpt            a copy of the latest one (what resume, eval and sample load)
    RUN/metrics.csv                      Lightning's CSV log (train loss, val NELBO, quality/*)
    RUN/schedule.json                    the exported schedule (schedule.<modality>.json each, for several modalities)
    RUN/schedule_history/refreshes.csv   one row per refresh of a learned schedule
    RUN/schedule_history/stepNNNNNNN[.<modality>].json   the schedule at each refresh
    RUN/eval.json                        the final evaluation
    RUN/timing.json                      wall times of training and evaluation
    RUN/samples/, RUN/plots/             what a user looks at

Nothing here imports Lightning: the trainer, the commands and the report all read the same layout.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Optional, Union

from .errors import UserError
from .files import atomic_write_text

_STEP_FILE = re.compile(r"^step(\d{7})(\.[A-Za-z0-9_-]+)?\.(json|ckpt)$")  # stepNNNNNNN[.<modality>].json|ckpt
_TIMES = ("nelbo_eval_s", "quality_eval_s", "final_eval_s")  # what counts as evaluation in eval_share


def step_stem(step: int) -> str:
    """``stepNNNNNNN``: the stem of a step checkpoint or schedule snapshot (zero-padded, so names sort by step)."""
    return f"step{int(step):07d}"


def file_step(name: str) -> Optional[int]:
    """The step of a checkpoint's or schedule snapshot's file name; None for a file that is not one."""
    match = _STEP_FILE.match(name)
    return int(match.group(1)) if match else None


def schedule_file_name(key: Optional[str] = None, stem: str = "schedule") -> str:
    """``STEM.<modality>.json`` for one member of a group of several, ``STEM.json`` for ``key`` None."""
    return f"{stem}.{key}.json" if key else f"{stem}.json"


def schedule_file_names(keys: list[str], stem: str = "schedule") -> dict[str, str]:
    """Each modality's schedule file name: a group of one keeps the plain ``STEM.json``."""
    return {key: schedule_file_name(None if len(keys) == 1 else key, stem) for key in keys}


def read_step_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file with a ``step`` column: its header and (step, row) pairs, every step checked; a
    damaged file is a one-line error naming it and the line."""
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


def read_json_object(path: Path) -> dict[str, Any]:
    """A run's JSON file ({} when absent); a damaged one is a one-line error naming it."""
    from .recipe import read_text
    from .textdata import parse_json

    path = Path(path)
    if not path.is_file():
        return {}
    data = parse_json(read_text(path, "run file"), f"run file {path}")
    if not isinstance(data, dict):
        raise UserError(f"run file {path} is damaged (not a JSON object); delete it and run `multidiff eval` to write it again")
    return data


class RunDir:
    """One run directory (it need not exist yet): its paths, and the reading and rewriting of its
    step-indexed files. Paths are properties; nothing is created until a write asks for it."""

    def __init__(self, path: Union[str, Path, "RunDir"]) -> None:
        self.path = Path(path.path if isinstance(path, RunDir) else path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- paths ----------------------------------------------------------------------------------

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{step_stem(step)}.ckpt"

    def step_checkpoints(self) -> list[Path]:
        """The step checkpoints present, oldest first."""
        return sorted(p for p in self.checkpoints.glob("step*.ckpt") if file_step(p.name) is not None)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def history(self) -> Path:
        return self.path / "schedule_history"

    @property
    def refreshes(self) -> Path:
        return self.history / "refreshes.csv"

    @property
    def eval_json(self) -> Path:
        return self.path / "eval.json"

    @property
    def timing_json(self) -> Path:
        return self.path / "timing.json"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def schedule_file(self) -> Path:
        """The exported schedule of a one-modality run."""
        return self.path / schedule_file_name()

    def schedule_paths(self, keys: list[str]) -> dict[str, Path]:
        """Where each modality's exported schedule goes (a group of one: :meth:`schedule_file`)."""
        return {key: self.path / name for key, name in schedule_file_names(keys).items()}

    def schedule_files(self) -> dict[str, Path]:
        """The exported schedule files present, by modality (a group of one: keyed by its domain)."""
        if self.schedule_file().is_file():
            return {self._domain(): self.schedule_file()}
        return {p.name[len("schedule."):-len(".json")]: p for p in sorted(self.path.glob("schedule.*.json"))}

    def _domain(self) -> str:
        """The domain recipe.yaml names ("" when it cannot be read)."""
        import yaml

        try:
            recipe = yaml.safe_load(self.recipe.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return ""
        return str(recipe.get("domain", "")) if isinstance(recipe, dict) else ""

    def is_run(self) -> bool:
        """True when the directory holds a multidiff run (its recipe.yaml)."""
        return self.recipe.is_file()

    # ---- reading ----------------------------------------------------------------------------------

    def read_eval(self) -> Optional[dict[str, Any]]:
        """eval.json, or None when it is absent or damaged (the run is then evaluated again)."""
        try:
            return json.loads(self.eval_json.read_text()) if self.eval_json.is_file() else None
        except ValueError:
            return None

    def read_timing(self) -> dict[str, Any]:
        return read_json_object(self.timing_json)

    def read_refreshes(self) -> list[dict[str, str]]:
        """The refresh records (refreshes.csv rows as read; [] when the run has none)."""
        if not self.refreshes.is_file():
            return []
        with self.refreshes.open(newline="") as f:
            return list(csv.DictReader(f))

    def validate_files(self) -> None:
        """Read every run file a resume reads or rewrites, so a damaged one is named before anything changes."""
        from .schedules.io import load_schedule_file

        for path in (self.metrics, self.refreshes):
            if path.is_file():
                read_step_rows(path)
        for path in (self.timing_json, self.eval_json):
            read_json_object(path)
        for path in self.schedule_files().values():
            load_schedule_file(path)

    # ---- writing ----------------------------------------------------------------------------------

    def write_eval(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.eval_json, json.dumps(result, indent=1))

    def record_timing(self, **values: float) -> None:
        """Merge wall times (seconds) into timing.json and recompute the evaluation's share of the run."""
        old = self.read_timing()
        old.update({k: round(float(v), 3) for k, v in values.items()})
        if "fit_s" in old:
            total = old["fit_s"] + old.get("final_eval_s", 0.0)
            old["eval_share"] = round(sum(old.get(k, 0.0) for k in _TIMES) / total, 4) if total > 0 else None
        atomic_write_text(self.timing_json, json.dumps(old, indent=1))

    def metrics_rows_before(self, step: int) -> Optional[tuple[list[str], list[dict[str, str]]]]:
        """metrics.csv's header and the rows logged before ``step`` (a resumed run logs the later
        ones again); None when there is no metrics.csv."""
        if not self.metrics.is_file():
            return None
        fields, stepped = read_step_rows(self.metrics)
        return fields, [row for row_step, row in stepped if row_step < step]

    def truncate_history(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop the refresh records and schedule
        snapshots they wrote (other files in schedule_history/ stay), and at step 0 the metrics."""
        if self.refreshes.is_file():
            fields, rows = read_step_rows(self.refreshes)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            writer.writerows(row for row_step, row in rows if row_step <= step)
            atomic_write_text(self.refreshes, buf.getvalue())
        for snap in self.history.glob("step*.json"):
            at = file_step(snap.name)
            if at is not None and at > step:
                snap.unlink()
        if step == 0:
            self.metrics.unlink(missing_ok=True)
