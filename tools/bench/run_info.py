"""What a benchmark records about the run itself: the load average, the commit, and
how to write numpy / pandas values as JSON."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import subprocess
from typing import Any

import numpy as np
import pandas as pd


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str | None:
    """The commit the code comes from, with "+dirty" when the tree has changes."""
    here = pathlib.Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=here)
        commit = out.stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=10, cwd=here).returncode == 1
        return commit + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return value.isoformat()
    return str(value)
