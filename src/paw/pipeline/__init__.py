"""The six-step transfer experiment (`paw run`)."""

from paw.pipeline.run import plan_experiment, run_pipeline

__all__ = ["plan_experiment", "run_pipeline"]
