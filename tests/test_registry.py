"""Methods register themselves: a method is its own package (here one outside sumtune, named in
$SUMTUNE_METHODS) that calls `register`; nothing else names it, yet train, evaluate, compare and
`sumtune experiment --methods` take it. And nothing outside `methods/` tests a method's name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sumtune"

PACKAGE = '''
from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase
from sumtune.methods.registry import register


@dataclass
class BiasOnlyConfig(MethodConfigBase):
    LR_GRIDS = {"bias_only": (1e-3, 3e-3, 1e-2)}
    DEMO_LR_GRIDS = {"bias_only": (1e-2, 3e-2, 1e-1)}


register("bias_only", BiasOnlyConfig, "bias_method.method:BiasOnly")
'''

METHOD = '''
from sumtune.methods.base import Method, freeze, load_params, save_params
from bias_method import BiasOnlyConfig


def _biases(model):
    return [n for n, _ in model.named_parameters() if n.endswith(".bias")]


class BiasOnly(Method):
    """BitFit-style: only the biases train."""

    name = "bias_only"
    config_class = BiasOnlyConfig
    weights_file = "weights.safetensors"

    def describe(self, cfg):
        return "biases"

    def prepare(self, model, tokenizer, cfg):
        freeze(model)
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.requires_grad_(True)
        return model

    def save(self, model, directory, meta):
        save_params(model, directory, meta, self.weights_file)

    def load(self, model, tokenizer, directory, cfg):
        freeze(model)
        load_params(model, directory, self.weights_file, _biases(model))
        return model

    def merged(self, model):
        return model
'''


def _sumtune(env: dict, *argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sumtune", *argv], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_method_registered_from_its_own_package_trains_evaluates_and_compares(tiny_neo, kaggle_dir, tmp_path):
    plugin = tmp_path / "plugin" / "bias_method"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(PACKAGE)
    (plugin / "method.py").write_text(METHOD)
    env = {**os.environ, "SUMTUNE_METHODS": "bias_method", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin"), os.environ.get("PYTHONPATH", "")])}
    common = ["--model", str(tiny_neo), "--data", str(kaggle_dir), "--batch-size", "4", "--grad-accum", "1",
              "--max-steps", "2", "--precision", "fp32", "--max-length", "192", "--set", "data.max_summary_length=48",
              "--max-eval-samples", "4", "--set", "eval.max_new_tokens=6"]
    out = tmp_path / "exp"
    _sumtune(env, "experiment", *common, "--methods", "zero_shot,bias_only", "--output-dir", str(out))
    results = json.loads((out / "bias_only/results.json").read_text())
    assert results["method"] == "bias_only" and 0 < results["trainable_params"] < results["total_params"]
    assert json.loads((out / "bias_only/eval/test/metrics.json").read_text())["n"] == 4
    assert "| bias_only |" in (out / "compare.md").read_text()
    _sumtune(env, "evaluate", str(out / "bias_only"), "--split", "validation", "--limit", "2")
    listing = _sumtune(env, "train", "--help").stdout
    assert "bias_only" in listing
    # without the plugin the name is unknown, in one line
    plain = subprocess.run([sys.executable, "-m", "sumtune", "evaluate", str(out / "bias_only")], capture_output=True,
                           text=True, env={**env, "SUMTUNE_METHODS": ""}, timeout=600)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1


def test_no_method_name_is_tested_outside_methods():
    """What the trainer, the FLOP count, the plan and the report need of a method comes from the
    method object: no comparison with a method's name in src/ outside methods/ (user messages and
    the default lists, which live in methods/, aside)."""
    from sumtune.methods import CONFIGS

    names = "|".join(map(re.escape, CONFIGS))
    test = re.compile(rf"""(==|!=|\bin\s*\(|\bin\s*\[)\s*["']({names})["']|["']({names})["']\s*(==|!=|\bin\b)""")
    found = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
             for p in SRC.rglob("*.py") if "methods" not in p.relative_to(SRC).parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if test.search(line)]
    assert not found, found
