"""PAW — Parameter-Aware Weight Transfer: move a LoRA adapter to a different base LLM."""

__version__ = "0.1.0"
