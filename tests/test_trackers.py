"""Experiment trackers (train.report_to) through Accelerate's: a real MLflow file store read back
with MLflow's own client (metrics equal to metrics.jsonl at the same steps, the config as params,
the sample-predictions table equal to what `evaluate` decodes from the kept weights, a resumed run
continuing the same MLflow run), W&B offline leaving a run directory whose records hold the same
numbers, and the checks that refuse a missing package, a missing login or an unknown name in one
line before the model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_train import one_thread  # noqa: F401  (autouse: one torch thread)

from sumtune.cli import main
from sumtune.config import build_config, config_differences, config_from_dict
from sumtune.errors import UserError
from sumtune.recipes import train as recipe
from sumtune.training import state, trackers

N_SAMPLES = 2  # train.log_predictions in these runs


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--max-steps", "4", "--batch-size", "4", "--grad-accum", "1", "--max-length", "192",
            "--precision", "fp32", "--set", "data.max_summary_length=64", "--set", "train.eval_steps=2",
            "--set", "eval.max_new_tokens=12", "--set", f"train.log_predictions={N_SAMPLES}", *extra]


def _events(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["split"] == split]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE to use one)."""
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):
        monkeypatch.delenv(var, raising=False)
    return uri


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_mlflow_run_holds_metrics_jsonl_params_and_sample_predictions(tiny_gpt2, kaggle_dir, tmp_path, mlflow_store):
    import mlflow

    from sumtune.recipes.evaluate import evaluate_run

    run = tmp_path / "run"
    assert main(_argv(tiny_gpt2, kaggle_dir, run, "--report-to", "mlflow")) == 0
    client = mlflow.MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("sumtune")
    (found,) = client.search_runs([experiment.experiment_id])
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert found.info.run_id == run_id
    logged = mlflow.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"

    train_ev, val_ev = _events(run, "train"), _events(run, "validation")
    assert [e["step"] for e in train_ev] == [1, 2, 3, 4] and [e["step"] for e in val_ev] == [2, 4]
    for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "epoch"):
        assert _history(client, run_id, f"train/{key}") == {e["step"]: e[key] for e in train_ev}, key
    for key in ("loss", "samples_seconds"):
        assert _history(client, run_id, f"validation/{key}") == {e["step"]: e[key] for e in val_ev}, key
    assert _history(client, run_id, "validation/best") == {e["step"]: float(e["best"]) for e in val_ev}
    assert all(e["samples_seconds"] > 0 for e in val_ev)
    res = json.loads((run / "results.json").read_text())
    assert res["validation_seconds"] >= sum(e["samples_seconds"] for e in val_ev)

    params = logged.data.params
    assert params["method.name"] == "lora" and params["train.report_to"] == "mlflow"
    assert float(params["train.lr"]) == build_config().train.lr and params["train.max_steps"] == "4"
    assert params["model.name"] == str(tiny_gpt2)

    # the table: N_SAMPLES rows per validation; at the kept (best) step they are what `evaluate` decodes
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="sample_predictions.json",
                                               dst_path=str(tmp_path / "artifacts"))
    table = json.loads(Path(path).read_text())
    assert table["columns"] == trackers.COLUMNS
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["step"] for r in rows] == [s for e in val_ev for s in [e["step"]] * N_SAMPLES]
    evaluate_run(run, "validation", limit=N_SAMPLES)
    reference = [json.loads(x) for x in (run / "eval/validation/predictions.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["step"] == res["best_step"]]
    assert [r["prediction"] for r in kept] == [x["prediction"] for x in reference]
    assert [r["reference"] for r in kept] == [x["reference"] for x in reference]
    assert [r["rougeL"] for r in kept] == pytest.approx([x["rougeL"] for x in reference], abs=1e-12)


def test_tracking_leaves_training_unchanged(tiny_gpt2, kaggle_dir, tmp_path, mlflow_store):
    """The decoding copy for the sample predictions changes no loss, no weight."""
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "plain")) == 0
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "tracked", "--report-to", "mlflow")) == 0
    for split in ("train", "validation"):
        plain, tracked = _events(tmp_path / "plain", split), _events(tmp_path / "tracked", split)
        assert [(e["step"], e["loss"]) for e in plain] == [(e["step"], e["loss"]) for e in tracked]
    assert not (tmp_path / "plain" / "trackers.json").exists()


def test_a_resumed_run_continues_the_same_mlflow_run(tiny_gpt2, kaggle_dir, tmp_path, mlflow_store, monkeypatch):
    import mlflow

    run = tmp_path / "run"
    stop_at = {"step": 2}

    def stop_request(accelerator, flag):  # a Ctrl-C after step 2: checkpoint, then stop
        return stop_at["step"] is not None and loop_step() == stop_at["step"]

    loops = []
    real_init = recipe._Loop.__init__

    def remember(self, *a, **k):
        real_init(self, *a, **k)
        loops.append(self)

    def loop_step():
        return loops[-1].progress.step

    monkeypatch.setattr(recipe._Loop, "__init__", remember)
    monkeypatch.setattr(recipe, "any_process", stop_request)
    assert main(_argv(tiny_gpt2, kaggle_dir, run, "--report-to", "mlflow")) == 130
    first = json.loads((run / "trackers.json").read_text())["mlflow"]
    stop_at["step"] = None
    assert main(["train", "--config", str(run / "config.yaml"), "--resume"]) == 0
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == first
    client = mlflow.MlflowClient(mlflow_store)
    (only,) = client.search_runs([client.get_experiment_by_name("sumtune").experiment_id])
    assert only.info.run_id == first
    train_ev = _events(run, "train")
    assert _history(client, first, "train/loss") == {e["step"]: e["loss"] for e in train_ev}
    assert sorted(_history(client, first, "train/loss")) == [1, 2, 3, 4]


def _wandb_records(path: Path) -> list[dict]:
    """The history rows of an offline W&B run's .wandb file: LevelDB log records (32 KiB blocks, a
    7-byte header per chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST) after W&B's 7-byte file
    header, each a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunk, rows = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_leaves_a_run_directory_with_the_metrics(tiny_gpt2, kaggle_dir, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-root").mkdir()
    wandb.teardown()  # settings are read once per process: this run's environment
    run = tmp_path / "run"
    assert main(_argv(tiny_gpt2, kaggle_dir, run, "--report-to", "wandb")) == 0
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    (offline,) = (tmp_path / "wandb-root" / "wandb").glob(f"offline-run-*-{run_id}")
    history = _wandb_records(offline / f"run-{run_id}.wandb")
    train_ev, val_ev = _events(run, "train"), _events(run, "validation")
    for split, events in (("train", train_ev), ("validation", val_ev)):
        logged = {r["_step"]: r[f"{split}/loss"] for r in history if f"{split}/loss" in r}
        assert logged == {e["step"]: e["loss"] for e in events}, split
    # a table per validation, written beside the run as W&B's table JSON
    tables = sorted((offline / "files/media/table/validation").glob("predictions_*.table.json"),
                    key=lambda p: int(p.name.split("_")[1]))
    assert [int(p.name.split("_")[1]) for p in tables] == [e["step"] for e in val_ev]
    for path, e in zip(tables, val_ev):
        table = json.loads(path.read_text())
        assert table["columns"] == trackers.COLUMNS and [r[0] for r in table["data"]] == [e["step"]] * N_SAMPLES


def _no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(state, "load_model", refuse)
    monkeypatch.setattr(state, "load_tokenizer", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_tracker_package_is_one_line_before_the_model_loads(name, tiny_gpt2, kaggle_dir, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    _no_model_load(monkeypatch)
    flag = ["--set", "train.tensorboard=true"] if name == "tensorboard" else ["--report-to", name]
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "run", *flag)) == 2
    line = _one_line(capsys)
    assert f"train.report_to {name} needs the" in line and f"pip install -e '.[{name}]'" in line
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_one_line_with_the_choices(tiny_gpt2, kaggle_dir, tmp_path, monkeypatch, capsys):
    _no_model_load(monkeypatch)
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "run", "--set", "train.report_to=[mlflow,wandbb]")) == 2
    line = _one_line(capsys)
    assert "config key 'train.report_to'" in line and "wandbb" in line
    assert "tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio" in line


def test_wandb_online_without_a_login_is_one_line_before_the_model_loads(tiny_gpt2, kaggle_dir, tmp_path,
                                                                         monkeypatch, capsys):
    import wandb

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)
    wandb.teardown()
    _no_model_load(monkeypatch)
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "run", "--report-to", "wandb")) == 2
    line = _one_line(capsys)
    assert "train.report_to wandb: no W&B login" in line and "WANDB_MODE=offline" in line
    wandb.teardown()


def test_an_unreachable_mlflow_server_is_one_line_before_the_model_loads(tiny_gpt2, kaggle_dir, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    _no_model_load(monkeypatch)
    assert main(_argv(tiny_gpt2, kaggle_dir, tmp_path / "run", "--report-to", "mlflow")) == 2
    assert "the tracking server http://127.0.0.1:9 is unreachable" in _one_line(capsys)


def test_comet_needs_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.delenv("COMET_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no Comet API key"):
        trackers._comet_login()
    (tmp_path / ".comet.config").write_text("[comet]\napi_key = abc\n")
    trackers._comet_login()
    (tmp_path / ".comet.config").unlink()
    monkeypatch.setenv("COMET_API_KEY", "abc")
    trackers._comet_login()


def test_tensorboard_flag_is_an_alias_and_trackers_never_block_resume():
    cfg = build_config(sets=["train.tensorboard=true", "train.report_to=mlflow,tensorboard,wandb"])
    assert trackers.tracker_names(cfg.train) == ["mlflow", "tensorboard", "wandb"]
    assert trackers.tracker_names(build_config(sets=["train.tensorboard=true"]).train) == ["tensorboard"]
    old = config_from_dict({"train": {"tensorboard": True, "lr": 1e-3}})  # a config.yaml from before report_to
    new = build_config(sets=["train.lr=1e-3", "train.report_to=[wandb]", "train.tracker_project=other",
                             "train.log_predictions=0"])
    assert config_differences(old, new) == []
    assert trackers.hyperparameters(cfg)["train.report_to"] == "mlflow,tensorboard,wandb"


@pytest.mark.slow  # two processes started through accelerate launch: about a minute on a loaded core
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")
def test_under_ddp_only_the_main_process_logs(tiny_gpt2, kaggle_dir, tmp_path, mlflow_store):
    """Two gloo processes: one MLflow run, its metrics metrics.jsonl's, one table row set per validation
    (the sample decodes shared out over both processes and gathered)."""
    import os
    import subprocess

    import mlflow

    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sumtune.cli"]
    argv = _argv(tiny_gpt2, kaggle_dir, run, "--report-to", "mlflow", "--set", "eval.batch_size=1")
    argv[argv.index("--batch-size") + 1] = "2"
    proc = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["processes"] == 2
    client = mlflow.MlflowClient(mlflow_store)
    (only,) = client.search_runs([client.get_experiment_by_name("sumtune").experiment_id])
    train_ev, val_ev = _events(run, "train"), _events(run, "validation")
    assert _history(client, only.info.run_id, "train/loss") == {e["step"]: e["loss"] for e in train_ev}
    assert _history(client, only.info.run_id, "validation/loss") == {e["step"]: e["loss"] for e in val_ev}
    path = mlflow.artifacts.download_artifacts(run_id=only.info.run_id, artifact_path="sample_predictions.json",
                                               dst_path=str(tmp_path / "artifacts"))
    steps = [r[0] for r in json.loads(Path(path).read_text())["data"]]
    assert steps == [s for e in val_ev for s in [e["step"]] * N_SAMPLES]


def test_tensorboard_alias_logs_the_metrics_and_a_text_table(tiny_gpt2, kaggle_dir, tmp_path):
    """train.tensorboard=true as before: RUN/tensorboard, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(_argv(tiny_gpt2, kaggle_dir, run, "--set", "train.tensorboard=true")) == 0
    (events,) = {p.parent for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    for split in ("train", "validation"):
        logged = {e.step: e.value for e in acc.Scalars(f"{split}/loss")}
        assert logged == pytest.approx({e["step"]: e["loss"] for e in _events(run, split)}, rel=1e-6)  # float32
    texts = acc.Tensors("validation/predictions/text_summary")
    assert [t.step for t in texts] == [e["step"] for e in _events(run, "validation")]
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert table.splitlines()[0] == "| " + " | ".join(trackers.COLUMNS) + " |" and len(table.splitlines()) == 2 + N_SAMPLES
