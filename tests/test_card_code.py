"""The model card's Python, taken from the exported README.md and run as it stands on the exported
model, gives the summary that the command the card names (`sumtune summarize RUN FILE --decoding ..
--precision ..`) prints: greedy and beam search, with and without a summary-only n-gram ban and a
minimum length. The model writes newlines often, so summaries end at sumtune's blank-line stop as
well as at max_new_tokens; `generate`'s own `no_repeat_ngram_size` (which also bans the article's
n-grams) gives other summaries, so the card's ban is the one that matters. `summarize --precision`
decodes in the precision it names and refuses fp16 without a GPU in one line."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_kaggle_dir
from method_utils import main_one_thread

from sumtune.cli import main

NEW = 32
ARTICLES = 3
# CNN/DM boilerplate that sumtune's cleaning removes: the card's code must clean as sumtune does
BOILER = ["By . Jane Doe . PUBLISHED: . 14:03 EST, 3 May 2013 . | . UPDATED: . 14:04 EST, 3 May 2013 . ",
          "Scroll down for video . ", "  "]
DECODINGS = {
    "greedy": [],
    "greedy, n-gram ban": ["--no-repeat-ngram-size", "2"],
    "beam": ["--num-beams", "3", "--length-penalty", "2.0"],
    "beam, n-gram ban, minimum, 2 sentences": ["--num-beams", "3", "--length-penalty", "2.0",
                                               "--no-repeat-ngram-size", "2", "--min-new-tokens", "8",
                                               "--max-sentences", "2"],
}


SEPARATOR = "\nTL;DR:"
# The scripted model's next-token logits after each of these tokens (the separator's last is ":"); every other
# token has a fixed background logit in (-3, 0), EOS -20. Greedy loops on " Monday the" to max_new_tokens; a
# summary-only 2-gram ban breaks the loop and the summary ends at a blank line ("." "\n" "\n"); generate's
# own ban forbids " On Monday", which every article's lead holds.
SCRIPT = {":": {" On": 10}, " On": {" Monday": 10, ".": 6}, " Monday": {" the": 10, " in": 7},
          " the": {" Monday": 10, ".": 8}, " in": {".": 10, " the": 5}, ".": {"\n": 10, " in": 5},
          "\n": {"\n": 10, " On": 6}}


def _scripted_model(tokenizer_dir: Path, out: Path, tie: bool = False) -> Path:
    """A GPT-2 whose next token depends on the last token only, as SCRIPT says: its blocks add nothing
    (output projections zero, no position embeddings), each scripted token's embedding is an orthogonal
    direction of norm sqrt(hidden) (final layer norm: itself) and the untied head maps it to its logits; the
    final layer norm's bias, orthogonal to them all, adds the background logits. `tie`: after ":" a token
    above " On" whose head row is " On"'s plus less than half a bf16 step: it wins in fp32, and in bf16 the two
    rows are one, so the first (" On") wins the tie."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {}
    for text in {t for row in SCRIPT.values() for t in row} | set(SCRIPT):
        (ids[text],) = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer(SEPARATOR, add_special_tokens=False).input_ids[-1] == ids[":"]
    d, eos = 64, tokenizer.eos_token_id
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=d, n_layer=1, n_head=4, bos_token_id=eos,
                     eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    # orthonormal directions, all orthogonal to the ones vector (zero mean: the layer norm leaves them as they are)
    basis = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, len(SCRIPT) + 1)], 1)).Q[:, 1:].T
    background = -3 * torch.rand(len(tokenizer))
    background[eos] = -20.0
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.ln_f.bias.copy_(basis[-1])
        head = model.lm_head.weight
        head.copy_(background[:, None] * basis[-1])
        for direction, (token, logits) in zip(basis, SCRIPT.items()):
            model.transformer.wte.weight[ids[token]] = d ** 0.5 * direction
            for nxt, logit in logits.items():
                head[ids[nxt]] += logit * direction / d ** 0.5
        if tie:
            head.copy_(head.bfloat16().float())
            a = ids[" On"]
            b = next(i for i in range(a + 1, len(tokenizer)) if i not in ids.values())
            h = model.transformer.ln_f(model.transformer.wte.weight[ids[":"]])
            k = int((h * head[a]).abs().argmax())
            head[b] = head[a]
            head[b, k] += torch.sign(h[k]) * 2.0 ** (torch.floor(torch.log2(head[a, k].abs())) - 10)
            assert float(h @ head[b]) > float(h @ head[a]) and torch.equal(head[b].bfloat16(), head[a].bfloat16())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _zero_shot_run(model: Path, root: Path, precision: str) -> Path:
    """A zero_shot run on `model` (the exported model is the model itself) with SEPARATOR."""
    data = write_kaggle_dir(root / "data", sizes=(8, 4, 4))
    main_one_thread(["train", "--method", "zero_shot", "--model", str(model), "--data", str(data),
                     "--output-dir", str(root / "run"), "--max-length", "160", "--precision", precision,
                     "--set", "data.max_summary_length=48", "--set", f"data.separator={SEPARATOR}",
                     "--max-eval-samples", "2"])
    return root / "run"


@pytest.fixture(scope="module")
def run(tiny_neo, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card_code")
    return _zero_shot_run(_scripted_model(tiny_neo, root / "model"), root, "fp32")


@pytest.fixture(scope="module")
def bf16_run(tiny_neo, tmp_path_factory) -> Path:
    """A run in bf16 on the scripted model with the tie after ":"."""
    root = tmp_path_factory.mktemp("card_bf16")
    return _zero_shot_run(_scripted_model(tiny_neo, root / "model", tie=True), root, "bf16")


def _articles(n: int) -> list[str]:
    from sumtune.tiny import synthetic_news

    return [BOILER[i % len(BOILER)] + row["article"] for i, row in enumerate(synthetic_news(n, seed=5))]


def _exported_card(run: Path, out: Path, flags: list[str], adapter: bool = False) -> tuple[str, str, str]:
    """Evaluate `run` with decoding `flags`, export it: (card body, the card's Python, the command it names)."""
    main_one_thread(["evaluate", str(run), "--limit", "1", "--max-new-tokens", str(NEW), *flags])
    shutil.rmtree(out, ignore_errors=True)
    main_one_thread(["export", str(run), "--output-dir", str(out), *(["--adapter"] if adapter else [])])
    body = (out / "README.md").read_text(encoding="utf-8")
    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    command = re.search(r"`(sumtune summarize RUN FILE [^`]*)`", body).group(1)
    return body, code, command


def _summarize(command: str, run: Path, text: Path, capsys) -> str:
    """The card's `sumtune summarize RUN FILE ...` on `run` and `text`: what it prints."""
    argv = [{"RUN": str(run), "FILE": str(text)}.get(a, a) for a in shlex.split(command)[1:]]
    capsys.readouterr()
    main_one_thread(argv)
    return capsys.readouterr().out.rstrip("\n")


def test_card_code_gives_summarizes_summary(run, tmp_path, capsys):
    """Each decoding: the card of the run evaluated with it; its code, on articles with CNN/DM boilerplate (cut
    to fit), gives its command's summaries. Greedy loops to max_new_tokens; the summary-only ban breaks the loop
    and the summary ends at a blank line; generate's own ban (the article's n-grams too) gives another summary."""
    new, summaries, own_ban, prompts = {}, {}, {}, set()
    for case, argv in DECODINGS.items():
        body, code, command = _exported_card(run, tmp_path / "plain", argv)
        assert "the test scores were taken in fp32" in body and command.endswith("--precision fp32")
        flags = dict(zip(argv[::2], argv[1::2]))
        for i, article in enumerate(_articles(ARTICLES)):
            scope = {"text": article}
            exec(code, scope)
            text = tmp_path / "article.txt"
            text.write_text(article, encoding="utf-8")
            summaries[case, i] = scope["summary"]
            assert summaries[case, i] == _summarize(command, run, text, capsys), (case, i)
            new[case, i] = scope["out"][0, len(scope["ids"]):].tolist()
            prompts.add(len(scope["ids"]))
            if "--no-repeat-ngram-size" in flags:
                own_ban[case, i] = _generate_own_ban(scope, flags)
    assert max(prompts) == 160 - 48 - 1  # data.max_length less the longest summary and EOS: an article was cut
    ends = {k: scope["tokenizer"].decode(v[-3:]) for k, v in new.items()}
    for i in range(ARTICLES):
        assert len(new["greedy", i]) == NEW
        assert ends["greedy, n-gram ban", i] == ".\n\n" and summaries["greedy, n-gram ban", i] != summaries["greedy", i]
        assert own_ban["greedy, n-gram ban", i] != new["greedy, n-gram ban", i]
        assert len(summaries["beam, n-gram ban, minimum, 2 sentences", i].splitlines()) == 2


def _generate_own_ban(scope: dict, flags: dict) -> list[int]:
    """The new tokens of `generate` with its own no_repeat_ngram_size and min_new_tokens (the card's stop rule
    kept), on the card's model and prompt."""
    inputs = torch.tensor([scope["ids"]])
    out = scope["model"].generate(
        input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False, max_new_tokens=NEW,
        num_beams=int(flags.get("--num-beams", 1)), length_penalty=float(flags.get("--length-penalty", 1)),
        no_repeat_ngram_size=int(flags["--no-repeat-ngram-size"]), min_new_tokens=int(flags.get("--min-new-tokens", 0)),
        eos_token_id=scope["stop"][0], pad_token_id=scope["stop"][0],
        stopping_criteria=[scope["SummaryEnd"](scope["rules"])])
    return out[0, len(scope["ids"]):].tolist()


def test_card_and_summarize_precision(bf16_run, tmp_path, capsys):
    """A run evaluated in bf16: its card says so and its code decodes under bf16 autocast, giving `summarize`'s
    summaries; `summarize --precision fp32` gives the card's code for fp32, another summary (the tie after ":"
    goes the other way); --precision fp16 on a CPU is one line."""
    from sumtune.card_code import card_python
    from sumtune.config import load_run_config

    run, out = bf16_run, tmp_path / "plain"
    body, code, command = _exported_card(run, out, [])
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["precision"] == "bf16"
    assert "the test scores were taken in bf16" in body and command.endswith("--precision bf16")
    assert "torch.autocast(model.device.type, dtype=torch.bfloat16)" in code
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    cfg = load_run_config(run)
    fp32 = "\n".join(card_python(cfg.data, metrics["decoding"], "fp32", peft_type=None, where=str(out), base="",
                                 model_name=cfg.model.name))
    assert "autocast" not in fp32
    text = tmp_path / "article.txt"
    for article in _articles(ARTICLES):
        text.write_text(article, encoding="utf-8")
        summaries = {}
        for precision, source in (("bf16", code), ("fp32", fp32)):
            scope = {"text": article}
            exec(source, scope)
            summaries[precision] = scope["summary"]
            assert summaries[precision] == _summarize(command.replace("bf16", precision), run, text, capsys)
        assert summaries["bf16"].startswith("On Monday the") and not summaries["fp32"].startswith("On")
    if not torch.cuda.is_available():
        assert main(["summarize", str(run), str(text), "--precision", "fp16"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "fp16 needs a CUDA GPU" in err


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "lora"])
def test_card_code_of_an_adapter(method, tiny_neo, tmp_path, capsys):
    """--adapter: the card's code loads the base model and the PEFT adapter (a soft prompt or a prefix before the
    prompt, or LoRA) and gives the summaries of the command it names (beam search, the summary-only ban)."""
    data = write_kaggle_dir(tmp_path / "data", sizes=(8, 4, 4))
    run = tmp_path / "run"
    main_one_thread(["train", "--method", method, "--model", str(tiny_neo), "--data", str(data),
                     "--output-dir", str(run), "--max-length", "160", "--precision", "fp32", "--batch-size", "4",
                     "--grad-accum", "1", "--set", "data.max_summary_length=48",
                     *[f"--set=method.{m}.n_tokens=2" for m in ("prompt_tuning", "p_tuning", "prefix_tuning")],
                     "--set", "method.lora.r=4", "--max-steps", "1", "--lr", "0.1", "--max-eval-samples", "2"])
    body, code, command = _exported_card(run, tmp_path / "adapter", ["--num-beams", "2", "--no-repeat-ngram-size", "2"],
                                         adapter=True)
    assert "PeftModel.from_pretrained(" in code
    text = tmp_path / "article.txt"
    for article in _articles(2):
        text.write_text(article, encoding="utf-8")
        scope = {"text": article}
        exec(code, scope)
        assert scope["summary"] == _summarize(command, run, text, capsys)
