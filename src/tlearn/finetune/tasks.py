"""The table of fine-tuning tasks (issue 28): one row per :class:`~tlearn.finetune.task.Task`,
in the order they are tried on a ``y``; the first that takes it is the fit's task, and a
checkpoint or model file names its task by the row's name."""

from __future__ import annotations

from typing import Any

from tlearn.finetune.multilabel import SeveralLabels
from tlearn.finetune.task import OneLabel, Task

__all__ = ["ONE_LABEL", "TASKS", "task_for"]

ONE_LABEL = OneLabel()

#: Every task by its name, in the order :func:`task_for` tries them (one label last: it
#: takes any target).
TASKS: dict[str, Task] = {task.name: task for task in (SeveralLabels(), ONE_LABEL)}


def task_for(y: Any) -> Task:
    """The first task of :data:`TASKS` that takes targets ``y``."""
    return next(task for task in TASKS.values() if task.takes(y))
