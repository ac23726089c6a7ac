"""BERTScore (Zhang et al. 2020) of generated summaries, through the `bert-score` package: per-document
precision, recall and F1, the unit that the bootstrap resamples, as `metrics.rouge_per_example` is for ROUGE.

`load_scorer` runs before any decoding, so that a missing package, a model not available offline or a
layer it lacks fails in one line before the expensive part; the scorer waits on the CPU and moves to the
evaluation device only to score. Plain BERTScore: no idf weighting, the model's tuned layer (bert-score's
table) unless eval.bertscore_layers names one, baseline rescaling only with eval.bertscore_rescale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sumtune.errors import UserError
from sumtune.offline import is_local_model, use_cache_only

if TYPE_CHECKING:
    import torch
    from bert_score import BERTScorer

    from sumtune.config import EvalConfig

BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
BATCH_SIZE = 64  # bert-score's default: its sentences are batched by length, so this fixes the batches
LANG = "en"  # the baselines' language (CNN/DailyMail and the presets' data are English)


def wanted(ev: EvalConfig) -> bool:
    return "bertscore" in ev.metrics


def covers(ev: EvalConfig, rec: dict | None) -> bool:
    """Whether an evaluation whose BERTScore record is `rec` (None: not scored) has what `ev` asks for."""
    if not wanted(ev):
        return True
    if rec is None:
        return False
    _package()
    name = _model_name(ev.bertscore_model)
    return (rec.get("model"), rec.get("num_layers"), rec.get("rescaled_with_baseline")) == (
        name, _layers(ev, name), ev.bertscore_rescale)


def _package():
    try:
        import bert_score  # late: bert-score is an optional extra ([bertscore])
    except ImportError:
        raise UserError("config key 'eval.metrics' includes bertscore but the bert-score package is not installed; "
                        "pip install -e '.[bertscore]'") from None
    return bert_score


def _model_name(name: str) -> str:
    """A local directory made absolute (checked to hold a model with safetensors weights); a Hub name unchanged."""
    if not is_local_model(name):
        return name
    path = Path(name).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise UserError(f"config key 'eval.bertscore_model': {name} is not a model directory (no config.json); "
                        "pass a Hugging Face model directory or a Hub name such as roberta-large")
    if not any(path.glob("*.safetensors")):
        raise UserError(f"config key 'eval.bertscore_model': {name} has no .safetensors weights (sumtune never "
                        "loads pickled .bin weights); convert them with safetensors.torch.save_file")
    return str(path)


def _layers(ev: EvalConfig, name: str) -> int:
    from bert_score.utils import model2layers  # late: bert-score is an optional extra ([bertscore])

    if ev.bertscore_layers is not None:
        return ev.bertscore_layers
    if name not in model2layers:
        raise UserError(f"config key 'eval.bertscore_layers': bert-score has no tuned layer for {name}; set the "
                        "layer to score (e.g. 17 for a copy of roberta-large)")
    return model2layers[name]


def _check_baseline(bert_score, name: str, layers: int) -> None:
    path = Path(bert_score.__file__).parent / "rescale_baseline" / LANG / f"{name}.tsv"
    if not path.is_file():
        raise UserError(f"config key 'eval.bertscore_rescale': bert-score has no English baseline for {name} (it has "
                        "them for Hub names such as roberta-large); set eval.bertscore_rescale=false")
    if layers >= len(path.read_text(encoding="utf-8").splitlines()) - 1:
        raise UserError(f"config key 'eval.bertscore_layers': {name}'s baseline has no layer {layers}")


def load_scorer(ev: EvalConfig) -> BERTScorer:
    """bert-score's scorer for `ev` on the CPU, or a one-line error: the package, the model (local, in the
    Hugging Face cache or downloadable now), its layer and, with rescaling, its baseline."""
    bert_score = _package()
    name = _model_name(ev.bertscore_model)
    layers = _layers(ev, name)
    if ev.bertscore_rescale:
        _check_baseline(bert_score, name, layers)
    if not is_local_model(name):
        use_cache_only()  # an unreachable Hub: the cache only, at once, rather than the client's retries
    try:
        return bert_score.BERTScorer(model_type=name, num_layers=layers, device="cpu", batch_size=BATCH_SIZE,
                                     lang=LANG if ev.bertscore_rescale else None,
                                     rescale_with_baseline=ev.bertscore_rescale)
    except AssertionError as e:  # bert-score checks the layer against the model's with an assert
        raise UserError(f"config key 'eval.bertscore_layers': {e}") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("" if is_local_model(name) else "; offline it must be in the Hugging Face cache: run `sumtune download "
                f"model {name} --out DIR` where there is internet and set eval.bertscore_model=DIR and "
                "eval.bertscore_layers")
        raise UserError(f"cannot load BERTScore model '{name}': {first}{hint}") from None


def record(scorer: BERTScorer) -> dict[str, Any]:
    """What the scores are, for metrics.json and the report: model, layer, rescaling, bert-score's hash."""
    import bert_score  # late: bert-score is an optional extra ([bertscore])

    return {"model": scorer.model_type, "num_layers": scorer.num_layers,
            "rescaled_with_baseline": scorer.rescale_with_baseline, "baseline_lang": scorer.lang,
            "idf": scorer.idf, "package": f"bert-score {bert_score.__version__}", "hash": scorer.hash}


def bertscore_per_example(scorer: BERTScorer, predictions: Sequence[str], references: Sequence[str],
                          device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """BERTScore P, R and F1 of each (prediction, reference) pair, in order (bert-score's values, 0..1 raw).

    A blank prediction or reference scores bert-score's documented raw 0 for all three (rescaled like the
    others): it is not sent to bert-score, whose 0.3.12 fails on a blank text under Transformers 5."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    zero = torch.zeros(3)
    if scorer.rescale_with_baseline:  # as bert-score rescales its raw values
        zero = (zero - scorer.baseline_vals) / (1 - scorer.baseline_vals)
    rows = [zero] * len(predictions)
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    if keep:
        # bert-score has no call to move its model: its attributes, as its constructor sets them
        scorer._model.to(device)
        scorer.device = device
        p, r, f = scorer.score([predictions[i] for i in keep], [references[i] for i in keep], batch_size=BATCH_SIZE)
        for j, i in enumerate(keep):
            rows[i] = torch.stack((p[j], r[j], f[j]))
    return {k: [float(row[n]) for row in rows] for n, k in enumerate(BERTSCORE_KEYS)}
