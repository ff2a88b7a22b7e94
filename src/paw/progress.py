"""One progress facility for every long loop (conversion, evaluation, training, transfer).

On a terminal it draws one live line, redrawn in place at most ten times a second. Anywhere else
(nohup, CI, a log file) it prints a plain line only when another ~10% is done or 30 s have passed,
each with rate and ETA, so a loop of any length writes about a dozen lines.
`PAW_PROGRESS=bar|plain|off` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

PLAIN_FRACTION_STEP = 0.10
PLAIN_MAX_SILENCE_S = 30.0
BAR_REFRESH_S = 0.1


def _mode(stream: IO[str]) -> str:
    forced = os.environ.get("PAW_PROGRESS", "").strip().lower()
    if forced in {"bar", "plain", "off"}:
        return forced
    return "bar" if getattr(stream, "isatty", lambda: False)() else "plain"


def _fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Counts work done and reports it without flooding. Use as a context manager or call close()."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        stream: IO[str] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.total = total if total and total > 0 else None
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _mode(self.stream)
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.start = clock()
        self._last_emit = self.start
        self._last_fraction_step = 0
        self._last_emitted_n = -1
        self._closed = False

    def set_postfix(self, text: str) -> None:
        """Extra text (e.g. `loss=1.23`) shown on the next line."""
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.mode == "bar":
            if now - self._last_emit >= BAR_REFRESH_S or (self.total and self.n >= self.total):
                self._emit(now, final=False)
        elif self.mode == "plain":
            if self.total:
                step = int(self.n / self.total / PLAIN_FRACTION_STEP)
                if step > self._last_fraction_step and self.n < self.total:
                    self._last_fraction_step = step
                    self._emit(now, final=False)
                    return
            if now - self._last_emit >= PLAIN_MAX_SILENCE_S:
                self._emit(now, final=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A plain line for this count is already out (e.g. the 30 s line at 100%): don't repeat it.
        if self.mode == "bar" or (self.mode == "plain" and self.n != self._last_emitted_n):
            self._emit(self.clock(), final=True)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [self.desc]
        if self.total:
            parts.append(f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)")
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            parts.append(f"{rate:.2f} {self.unit}/s, elapsed {_fmt_duration(elapsed)}, ETA {_fmt_duration(eta)}")
        else:
            parts.append(f"{self.n} {self.unit}, {rate:.2f} {self.unit}/s, elapsed {_fmt_duration(elapsed)}")
        if self.postfix:
            parts.append(self.postfix)
        return " | ".join(parts)

    def _emit(self, now: float, final: bool) -> None:
        self._last_emit = now
        self._last_emitted_n = self.n
        line = self._line(now)
        if self.mode == "bar":
            width = 24
            done = int(width * self.n / self.total) if self.total else 0
            bar = "[" + "#" * done + "." * (width - done) + "] " if self.total else ""
            self.stream.write("\r\033[K" + bar + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate while reporting progress, e.g. `for batch in track(batches, "eval arc-easy")`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as progress:
        for item in iterable:
            yield item
            progress.update(1)


def lightning_progress_callback() -> Any:
    """A Lightning callback that replaces Lightning's own bars with `Progress` lines."""
    from lightning.pytorch.callbacks import ProgressBar

    class PawProgressBar(ProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._enabled = True
            self._bar: Progress | None = None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def _start(self, total: Any, desc: str, unit: str) -> None:
            if self._enabled and self.trainer.is_global_zero:
                total_int = int(total) if isinstance(total, (int, float)) and total != float("inf") else None
                self._bar = Progress(total_int, desc, unit)

        def _advance(self, outputs: Any = None) -> None:
            if self._bar is not None:
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                if loss is not None and hasattr(loss, "item"):
                    # Lightning hands back the loss divided by the accumulation factor; show the batch's own.
                    scale = max(self.trainer.accumulate_grad_batches, 1)
                    self._bar.set_postfix(f"loss={float(loss.item()) * scale:.4f}")
                self._bar.update(1)

        def _stop(self) -> None:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._start(trainer.max_steps if trainer.max_steps > 0 else None, "train", "step")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            # One tick per optimizer step, not per micro-batch.
            if (batch_idx + 1) % max(trainer.accumulate_grad_batches, 1) == 0:
                self._advance(outputs)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._stop()

        def on_test_start(self, trainer: Any, pl_module: Any) -> None:
            self._start(sum(_as_list(trainer.num_test_batches)), "eval", "batch")

        def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
            self._advance()

        def on_test_end(self, trainer: Any, pl_module: Any) -> None:
            self._stop()

        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            self._start(sum(_as_list(trainer.num_predict_batches)), "predict", "batch")

        def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
            self._advance()

        def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
            self._stop()

    return PawProgressBar()


def _as_list(value: Any) -> list[float]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, (int, float)) and v != float("inf")]
