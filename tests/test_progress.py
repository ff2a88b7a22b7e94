import io

from paw.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_output_stays_within_line_budget_on_a_long_loop(monkeypatch):
    monkeypatch.delenv("PAW_PROGRESS", raising=False)
    stream, clock = io.StringIO(), FakeClock()
    with Progress(100_000, "eval arc-easy", unit="q", stream=stream, clock=clock) as progress:
        for _ in range(100_000):
            clock.now += 0.0001  # 10 s in all: no time-based lines
            progress.update()
    lines = stream.getvalue().splitlines()
    assert 9 <= len(lines) <= 11, lines
    assert all("q/s" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("eval arc-easy | 100000/100000 (100%)")


def test_plain_output_reports_every_30_seconds_on_a_slow_loop(monkeypatch):
    monkeypatch.delenv("PAW_PROGRESS", raising=False)
    stream, clock = io.StringIO(), FakeClock()
    with Progress(None, "train", unit="step", stream=stream, clock=clock) as progress:
        for _ in range(600):
            clock.now += 1.0  # ten minutes, total unknown
            progress.update()
    lines = stream.getvalue().splitlines()
    assert 19 <= len(lines) <= 21, len(lines)


def test_bar_mode_redraws_in_place(monkeypatch):
    monkeypatch.setenv("PAW_PROGRESS", "bar")
    stream, clock = io.StringIO(), FakeClock()
    with Progress(50, "convert", stream=stream, clock=clock) as progress:
        for _ in range(50):
            clock.now += 1.0
            progress.update()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 51


def test_off_mode_is_silent(monkeypatch):
    monkeypatch.setenv("PAW_PROGRESS", "off")
    stream = io.StringIO()
    with Progress(10, "x", stream=stream) as progress:
        progress.update(10)
    assert stream.getvalue() == ""
