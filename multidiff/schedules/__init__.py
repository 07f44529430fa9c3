"""Training-noise distributions over u = ln σ (see :func:`make_schedule`)."""
from .api import list_schedules, load_schedule, make_schedule
from .base import Schedule, ScheduleContext, ScheduleTable

__all__ = ["Schedule", "ScheduleContext", "ScheduleTable", "list_schedules", "load_schedule", "make_schedule"]
