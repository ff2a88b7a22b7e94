"""Benchmark tasks as data: the registry, the sources (embedded, hub, local files) and lm-eval's prompts."""

from paw.tasks.items import MCItem, training_pairs
from paw.tasks.registry import TaskSpec, canonical_split, canonical_task_name, get_task, task_names
from paw.tasks.sampling import sample_items
from paw.tasks.sources import SOURCES, available_splits, load_items

__all__ = [
    "SOURCES",
    "MCItem",
    "TaskSpec",
    "available_splits",
    "canonical_split",
    "canonical_task_name",
    "get_task",
    "load_items",
    "sample_items",
    "task_names",
    "training_pairs",
]
