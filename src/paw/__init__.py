"""PAW — Parameter-Aware Weight Transfer: move a LoRA adapter to a different base LLM."""

import os

__version__ = "0.1.0"

# PAW reports progress through paw.progress only; the hub's and tokenizers' own output would flood logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
