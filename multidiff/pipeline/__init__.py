"""One pipeline for ``train``, ``compare``, ``eval`` and ``sample``: prepare → fit → evaluate → report.

- :mod:`.prepare`: a resolved recipe → a :class:`Setup` (data, σ_data, schedule, model and the
  domain's sample metric), validating everything a run needs before anything is written;
- :mod:`.evaluate`: a run's checkpoint loaded and evaluated (eval.json), its samples;
- :mod:`.commands`: :func:`train_run` makes one run directory (lock, recipe, fit with ``train/``,
  evaluation, plots); :func:`run_comparison` trains several schedules × seeds and writes one report.

The run directory's layout belongs to :class:`multidiff.rundir.RunDir`.
"""
from .commands import check_device_settings, is_launched_worker, resolved_recipe_text, run_comparison, train, train_run
from .evaluate import (
    REEVALUABLE_KEYS,
    check_checkpoint_recipe,
    decoded_samples,
    device_for_inference,
    evaluate_existing,
    evaluate_run,
    load_run,
    load_weights,
    quality,
    read_checkpoint,
    read_run_recipe,
    sample_run,
    tracked_values,
)
from .prepare import Setup, default_precision, known_defaults, prepare, resolve_full, sampling_grid, schedule_label

__all__ = [
    "REEVALUABLE_KEYS", "Setup", "check_checkpoint_recipe", "check_device_settings", "decoded_samples", "default_precision",
    "device_for_inference", "evaluate_existing", "evaluate_run", "is_launched_worker", "known_defaults", "load_run",
    "load_weights", "prepare", "quality", "read_checkpoint", "read_run_recipe", "resolve_full", "resolved_recipe_text",
    "run_comparison", "sample_run", "sampling_grid", "schedule_label", "tracked_values", "train", "train_run",
]  # fmt: skip
