"""`export_run`: a plain Hugging Face model directory with the run's logits."""

from __future__ import annotations

import pytest
import torch
from method_utils import make_run, padded_batch

from sumtune.errors import UserError
from sumtune.export import export_run
from sumtune.runs import load_run


@pytest.mark.parametrize("arch,method,sets", [
    ("tiny_neo", "lora", ("method.r=2",)),
    ("tiny_gpt2", "lora", ("method.r=2",)),
    ("tiny_gpt2", "last_layers", ("method.last_k_blocks=1", "method.train_final_norm=true")),
    ("tiny_neo", "full", ()),
    ("tiny_neo", "zero_shot", ()),
])
def test_export_is_a_plain_model_with_the_run_logits(request, tmp_path, arch, method, sets):
    from transformers import AutoModelForCausalLM, pipeline

    run, *_ = make_run(tmp_path / "run", request.getfixturevalue(arch), method, sets)
    out = export_run(run, tmp_path / "export")
    _, _, model, tok = load_run(run)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ in ("GPTNeoForCausalLM", "GPT2LMHeadModel")
    if method == "last_layers":  # the trained head stays untied from the frozen input embeddings
        assert not torch.equal(plain.lm_head.weight, plain.transformer.wte.weight)
    batch = padded_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, rtol=0, atol=1e-4)
    gen = pipeline("text-generation", model=str(out), device="cpu")
    text = gen("Boston (CNN) --", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("Boston (CNN) --")


def test_export_of_last_blocks_keeps_the_head_tied(tiny_neo, tmp_path):
    """train_head=false: the exported model ties its head to the input embeddings, as the base did."""
    from transformers import AutoModelForCausalLM

    run, *_ = make_run(tmp_path / "run", tiny_neo, "last_layers", ("method.last_k_blocks=1", "method.train_head=false"))
    out = export_run(run, tmp_path / "export")
    _, _, model, tok = load_run(run)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.tie_word_embeddings and plain.lm_head.weight is plain.transformer.wte.weight
    batch = padded_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, rtol=0, atol=1e-4)


def test_export_of_a_soft_prompt_points_to_the_adapter(tiny_neo, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "prompt_tuning", ("method.n_tokens=3",), steps=1)
    with pytest.raises(UserError, match="soft prompt.*PeftModel.from_pretrained") as e:
        export_run(run, tmp_path / "export")
    assert "\n" not in str(e.value) and str(run / "adapter") in str(e.value)
    assert not (tmp_path / "export").exists()


def test_export_replaces_its_own_output_but_no_other_directory(tiny_neo, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "zero_shot")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a sumtune export"):
        export_run(run, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    export_run(run, tmp_path / "export")
    export_run(run, tmp_path / "export")
    assert (tmp_path / "export" / "config.json").is_file()


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_exported_files_are_as_shareable_as_the_umask_allows(tiny_neo, tmp_path, umask, file_mode, dir_mode):
    """mkstemp/mkdtemp make private files (0600/0700); an export gets what `open` would give: 0644 under
    umask 022, and stays private under 077."""
    import os

    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2",))
    old = os.umask(umask)
    try:
        out = export_run(run, tmp_path / "export")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"README.md", "model.safetensors", "config.json"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(file_mode) for p in files}
    assert oct(out.stat().st_mode & 0o777) == oct(dir_mode)
