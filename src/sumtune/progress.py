"""tqdm bars that stay readable in log files: on a terminal they refresh often; when
stderr is redirected they refresh at most every 30 s (plus the final state)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(desc: str, total: int, unit: str, initial: int = 0, enabled: bool = True) -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                dynamic_ncols=True, mininterval=0.1 if tty else 30.0)
