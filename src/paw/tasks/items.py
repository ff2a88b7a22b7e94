"""The unit every part of PAW shares: one multiple-choice question, formatted as lm-evaluation-harness does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCItem:
    """One question, already formatted exactly as lm-evaluation-harness 0.4.x would score it zero-shot.

    Choice i is scored as log P(continuations[i] | contexts[i]). Most tasks repeat one context for every choice;
    WinoGrande substitutes each option into the context and shares one continuation ("partial scoring").
    `choices` are lm-eval's `doc_to_choice` strings, whose character lengths normalise `acc_norm`.
    """

    id: str
    task: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        n = len(self.choices)
        if n < 2 or len(self.contexts) != n or len(self.continuations) != n or not 0 <= self.gold < n:
            raise ValueError(f"malformed item {self.id!r}: {n} choices, gold {self.gold}")


def training_pairs(items: list[MCItem]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for supervised training: the gold choice's context and continuation."""
    return [(item.contexts[item.gold], item.continuations[item.gold]) for item in items]
