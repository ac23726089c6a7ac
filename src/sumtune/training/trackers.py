"""Experiment trackers (`train.report_to`, with `train.tensorboard` as an alias for "tensorboard"),
through Accelerate's (`Accelerator(log_with=...)`, `init_trackers`, `log`, `get_tracker`).

- Checked before the model loads (`check_trackers`, every process alike): the package imports
  and Accelerate finds it (Accelerate itself only drops a missing one, silently), and a tracker
  that logs to a server has a login and reaches it (W&B unless WANDB_MODE=offline, Comet, an
  MLflow store), so a run never fails at its first log after the model has loaded.
- What they get: the flattened config as hyper-parameters, every event that goes to
  metrics.jsonl (`Records` feeds them: the same numbers at the same steps), and at each
  validation a table of sample predictions where the tracker has tables (W&B, ClearML, MLflow's
  `log_table`; TensorBoard: a Markdown table as text).
- Only the main process logs (Accelerate starts the trackers there only). The tracker run ids go
  to RUN/trackers.json, so `--resume` continues the same W&B and MLflow runs.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import json
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import accelerate
from accelerate.tracking import TensorBoardTracker, get_available_trackers

from sumtune.config import Config, TrainConfig
from sumtune.config_values import flatten
from sumtune.errors import UserError
from sumtune.io import atomic_write_json
from sumtune.offline import reachable

TABLES = ("wandb", "clearml", "mlflow", "tensorboard")  # trackers given the sample-predictions table
EXTRAS = {"wandb": "'.[wandb]'", "mlflow": "'.[mlflow]'", "tensorboard": "'.[tensorboard]'"}  # pip install -e
PACKAGES = {"mlflow": "mlflow-skinny"}  # else the tracker's own name
ARTICLE_CHARS = 1000  # an article's first characters in the table
COLUMNS = ["step", "article", "reference", "prediction", "rougeL"]


def tracker_names(tc: TrainConfig) -> list[str]:
    """train.report_to, with "tensorboard" when train.tensorboard (no repeats)."""
    return list(dict.fromkeys([*tc.report_to, *(["tensorboard"] if tc.tensorboard else [])]))


def wants_samples(cfg: Config) -> bool:
    """Whether validations decode sample predictions: a tracker with tables and train.log_predictions > 0."""
    return cfg.train.log_predictions > 0 and any(n in TABLES for n in tracker_names(cfg.train))


def check_trackers(cfg: Config) -> list[str]:
    """The trackers to pass to `Accelerator(log_with=...)`, each usable now; else one UserError line."""
    names = tracker_names(cfg.train)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            how = f"pip install -e {EXTRAS[name]}" if name in EXTRAS else f"pip install {PACKAGES.get(name, name)}"
            raise UserError(f"train.report_to {name} needs the {PACKAGES.get(name, name)} package: {how}, "
                            f"or drop {name} from train.report_to") from None
        if name not in {str(t) for t in get_available_trackers()}:
            raise UserError(f"train.report_to {name}: Accelerate {accelerate.__version__} does not find a usable "
                            f"{name} (its version may be unsupported); drop it from train.report_to")
        LOGINS.get(name, lambda: None)()
    return names


def log_with(names: list[str], run_path: Path) -> list:
    """Accelerate's `log_with` for `names`: TensorBoard as a tracker writing to RUN/tensorboard (where
    runs before train.report_to wrote), the others by name."""
    return [TensorBoardTracker("tensorboard", str(run_path)) if n == "tensorboard" else n for n in names]


def _wandb_login() -> None:
    """W&B online needs an API key (env, netrc or wandb settings) and its server, as `wandb.init` finds them."""
    try:  # the settings wandb.init resolves (env, settings files), without starting its service
        from wandb.sdk.wandb_setup import singleton  # late: wandb is an optional extra ([wandb])

        settings = singleton().settings
        mode, base_url, key = settings.mode, settings.base_url, settings.api_key
    except (ImportError, AttributeError):  # another wandb version: its environment variables
        mode = os.environ.get("WANDB_MODE", "online")
        base_url, key = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), None
    if mode in ("offline", "dryrun", "disabled"):
        return
    url = urlsplit(base_url)
    host = url.hostname or ""
    if not (key or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has(host)):
        raise UserError(f"train.report_to wandb: no W&B login for {host} (no WANDB_API_KEY, no ~/.netrc entry); "
                        "run `wandb login`, or set WANDB_MODE=offline to log to local files (`wandb sync` uploads them)")
    if not reachable(host, url.port or (443 if url.scheme == "https" else 80)):
        raise UserError(f"train.report_to wandb: {host} is unreachable; set WANDB_MODE=offline to log to local "
                        "files (`wandb sync` uploads them later)")


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        return bool(path.is_file() and netrc.netrc(str(path)).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def _comet_login() -> None:
    """Comet needs an API key: COMET_API_KEY or `api_key` in a .comet.config (COMET_CONFIG, here, home)."""
    if os.environ.get("COMET_API_KEY"):
        return
    for path in (os.environ.get("COMET_CONFIG"), Path.cwd() / ".comet.config", Path.home() / ".comet.config"):
        parser = configparser.ConfigParser()
        if path and Path(path).is_file() and parser.read(path) and parser.get("comet", "api_key", fallback=""):
            return
    raise UserError("train.report_to comet_ml: no Comet API key (no COMET_API_KEY, no api_key in .comet.config); "
                    "run `comet login` or set COMET_API_KEY")


def _mlflow_store() -> None:
    """The tracking store MLflow resolves (MLFLOW_TRACKING_URI, else its default) must open now."""
    import mlflow  # late: mlflow is an optional extra ([mlflow])

    uri = mlflow.get_tracking_uri()
    url = urlsplit(uri)
    if url.scheme in ("http", "https"):
        if not reachable(url.hostname or "", url.port or (443 if url.scheme == "https" else 80)):
            raise UserError(f"train.report_to mlflow: the tracking server {uri} is unreachable; start it or set "
                            "MLFLOW_TRACKING_URI to a reachable one (a local store: file:./mlruns)")
        return
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure of the store is the user's setting to fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"train.report_to mlflow: the tracking store {uri} does not open ({first[:200]}); set "
                        "MLFLOW_TRACKING_URI=file:./mlruns with MLFLOW_ALLOW_FILE_STORE=true for a local store, "
                        "a server's http:// address, or pip install mlflow for a database store") from None


LOGINS = {"wandb": _wandb_login, "comet_ml": _comet_login, "mlflow": _mlflow_store}


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The config flattened to dotted keys, lists as comma-separated text (what every tracker takes)."""
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in flatten(cfg.to_dict()).items()}


def scalars(event: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl event as tracker metrics: split/key for each number (a flag as 0/1, a 95%
    interval as key_ci95_low/high); its step is the tracker step."""
    split = event["split"]
    out: dict[str, float] = {}
    for k, v in event.items():
        if k in ("step", "split"):
            continue
        if isinstance(v, (bool, int, float)):
            out[f"{split}/{k}"] = float(v) if isinstance(v, bool) else v
        elif k == "ci95":
            for name, (low, high) in v.items():
                out[f"{split}/{name}_ci95_low"], out[f"{split}/{name}_ci95_high"] = low, high
    return out


class Trackers:
    """The run's trackers, on an Accelerator built with `log_with=names`."""

    def __init__(self, accelerator, cfg: Config, run_path: Path, names: list[str]):
        self.accelerator, self.cfg, self.path, self.names = accelerator, cfg, Path(run_path), names
        self.ids = self.path / "trackers.json"

    def start(self, resume: bool) -> None:
        """Start every tracker (main process), the config as hyper-parameters; on resume the W&B and
        MLflow runs recorded in RUN/trackers.json continue."""
        if not self.names:
            return
        saved = json.loads(self.ids.read_text(encoding="utf-8")) if resume and self.ids.is_file() else {}
        wandb = {"name": self.path.name, **({} if os.environ.get("WANDB_DIR") else {"dir": str(self.path)})}
        if "wandb" in saved:
            wandb.update(id=saved["wandb"], resume="allow")
        mlflow = {"run_name": self.path.name, **({"run_id": saved["mlflow"]} if "mlflow" in saved else {})}
        try:
            self.accelerator.init_trackers(self.cfg.train.tracker_project,
                                           init_kwargs={"wandb": wandb, "mlflow": mlflow})
        except Exception as e:  # noqa: BLE001 - a tracker's own failure, said in one line
            for tracker in self.accelerator.trackers:  # close those that started; the failed one has nothing to close
                with contextlib.suppress(Exception):
                    tracker.finish()
            self.accelerator.trackers.clear()
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise UserError(f"train.report_to: a tracker failed to start ({type(e).__name__}: {first}); fix its "
                            "setting or drop it from train.report_to") from None
        if not self.accelerator.is_main_process:
            return
        params = hyperparameters(self.cfg)
        for tracker in self.accelerator.trackers:
            if not (tracker.name == "mlflow" and "mlflow" in saved):  # MLflow refuses to change a logged param
                tracker.store_init_configuration(params)
        ids = {}
        if "wandb" in self.names:
            ids["wandb"] = self.accelerator.get_tracker("wandb", unwrap=True).id
        if "mlflow" in self.names:
            ids["mlflow"] = self.accelerator.get_tracker("mlflow", unwrap=True).info.run_id
        if ids:
            atomic_write_json(self.ids, ids)

    def log(self, event: dict[str, Any]) -> None:
        """One metrics.jsonl event (main process; a no-op without trackers)."""
        if self.names:
            self.accelerator.log(scalars(event), step=event["step"])

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample predictions (`rows`: article, reference, prediction, rougeL) where a tracker has tables."""
        if not rows or not self.accelerator.is_main_process:
            return
        data = [[step, r["article"][:ARTICLE_CHARS], r["reference"], r["prediction"], r["rougeL"]] for r in rows]
        for name in (n for n in self.names if n in TABLES):
            if name == "mlflow":  # one JSON table artifact in the tracker's (active) run, appended each time
                import mlflow  # late: mlflow is an optional extra ([mlflow])

                mlflow.log_table({c: [row[i] for row in data] for i, c in enumerate(COLUMNS)},
                                 artifact_file="sample_predictions.json")
            elif name == "tensorboard":
                self.accelerator.get_tracker(name).log({"validation/predictions": markdown_table(data)}, step=step)
            else:
                self.accelerator.get_tracker(name).log_table("validation/predictions", columns=COLUMNS, data=data,
                                                             step=step)

    def finish(self) -> None:
        """Close every tracker (not `end_training`, which would also end the process group)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()


def markdown_table(data: list[list[Any]]) -> str:
    """Rows as a Markdown table (TensorBoard's text plugin renders it), one line per row."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else " ".join(str(v).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in data])
