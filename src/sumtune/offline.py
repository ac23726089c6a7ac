"""No network when every source is local; a quick, bounded "is the Hub reachable?" otherwise.

- `apply_offline_env(model_name, data_source)`: when every given source is a local path,
  set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE, so neither `datasets`
  (which otherwise sends HEAD requests even for a local CSV) nor `transformers` touches the
  network. Call it before `huggingface_hub`, `datasets` or `transformers` are imported; if
  they already are, their offline flags are switched too.
- `hub_reachable()`: one TCP connect to the Hub endpoint with a short timeout (DNS
  included), remembered for the process. Unreachable: load Hub names from the local cache
  only (`local_files_only=True`), and fail in one line when not cached, instead of the
  client's retries.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.gguf_files import NAMED_MODELS

PROBE_TIMEOUT_S = 2.5
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_probed: dict[tuple[str, int], bool] = {}


def is_local_model(name: str | None) -> bool:
    """A model directory or file (or something written as a path), or a named real model
    (sumtune.gguf_files.NAMED_MODELS, a file in sumtune's cache), rather than a Hub name."""
    if not name:
        return False
    return (Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
            or name in NAMED_MODELS)


def is_local_data(source: str | None) -> bool:
    """A file or directory, not ``hf:NAME``."""
    return bool(source and source.strip()) and not source.strip().startswith("hf:")


def local_only(model_name: str | None, data_source: str | None) -> bool:
    """True when at least one source is given and every given one is local."""
    given = [(n, is_local_model) for n in (model_name,) if n] + [(d, is_local_data) for d in (data_source,) if d]
    return bool(given) and all(check(v) for v, check in given)


def set_offline(on: bool = True) -> None:
    """Set the offline environment variables, and the flags of already imported HF libraries."""
    for var in _OFFLINE_VARS:
        if on:
            os.environ[var] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as c  # late: only touches a library already imported

        c.HF_HUB_OFFLINE = on
    if "datasets" in sys.modules:
        import datasets.config as dc  # late: only touches a library already imported

        dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = on


def apply_offline_env(model_name: str | None, data_source: str | None) -> bool:
    """Go offline when `local_only(model_name, data_source)`; returns whether it did.
    Never switches an offline environment back on."""
    if not local_only(model_name, data_source):
        return False
    set_offline(True)
    return True


def hub_offline() -> bool:
    """Whether the Hub clients are in offline mode now."""
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as c  # late: only touches a library already imported

        return bool(c.HF_HUB_OFFLINE)
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> tuple[str, int]:
    # late: the Hub client only to probe the Hub; the command line imports this module
    from huggingface_hub import constants

    u = urlsplit(constants.ENDPOINT)
    return u.hostname or "huggingface.co", u.port or (443 if u.scheme == "https" else 80)


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to (host, port) within `timeout` seconds, name resolution included
    (run in a daemon thread: getaddrinfo itself has no timeout)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True, name="sumtune-hub-probe")
    t.start()
    t.join(timeout + 0.5)
    return bool(ok and ok[0])


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub endpoint accepts a connection (remembered per process)."""
    key = _endpoint()
    if key not in _probed:
        _probed[key] = reachable(*key)
    return _probed[key]


def use_cache_only() -> bool:
    """For a Hub name: True when the client must not try the network (offline mode, or the
    Hub unreachable), so the load reads the local cache only and fails at once if not cached.
    An unreachable Hub switches the whole process offline (`set_offline`): every later Hub
    call (datasets included) reads the cache instead of retrying."""
    if hub_offline():
        return True
    if hub_reachable():
        return False
    set_offline(True)
    return True


def offline_for_runs(runs: list[str], model: str | None, data: str | None, need_data: bool = False) -> None:
    """No network call when the runs' model (and, with `need_data`, their data) are local."""
    try:
        cfgs = [load_run_config(r) for r in runs]
    except UserError:
        return  # the command itself reports it
    models = {model or c.model.name for c in cfgs}
    sources = {data or c.data.source for c in cfgs} if need_data else {None}
    if len(models) == 1 and len(sources) == 1:
        apply_offline_env(models.pop(), sources.pop())
