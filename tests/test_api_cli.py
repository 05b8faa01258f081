"""API and CLI agree: generate() takes its defaults from generation_config.json and stops at EOS like
the CLI; sampling knobs match HF's definitions; stop strings follow HF's rule; prompts come from
--prompt, --prompt - or --prompt-file; --json tells finish_reason and the settings used; flags,
prompt and tokenizer are checked before any weight reaches the GPU."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from transformers.generation import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from runtime import generate as generate_cli
from runtime.sampling import Sampler, SamplingParams
from runtime.stops import IncrementalDecoder, StopStrings
from tests.cli import error_line


@pytest.fixture(scope="module")
def mod(compiled):
    return compiled("tiny", "f32", "float32")


@pytest.fixture(scope="module")
def model(mod):
    from runtime import load

    return load(mod)


# sampling, against HF's own processors --------------------------------------------------------
def _kept(sampler: Sampler, logits: np.ndarray, draws: int = 400) -> set[int]:
    return {sampler(logits) for _ in range(draws)}


def test_repetition_penalty_equals_hf():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32) * 3
    prompt = [1, 4, 4, 9, 30]
    s = Sampler(SamplingParams(repetition_penalty=1.3), prompt)
    ours = s._penalized(logits)
    hf = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), torch.tensor(logits[None]))[0].numpy()
    np.testing.assert_allclose(ours, hf, rtol=1e-6)
    assert s(logits) == int(np.argmax(hf))  # greedy picks after the penalty, as HF's greedy does


@pytest.mark.parametrize("kw,hf", [
    ({"top_k": 5}, lambda: TopKLogitsWarper(5)),
    ({"top_p": 0.6}, lambda: TopPLogitsWarper(0.6)),
    ({"min_p": 0.2}, lambda: MinPLogitsWarper(0.2)),
])
def test_cuts_keep_the_tokens_hf_keeps(kw, hf):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(40) * 2).astype(np.float32)
    warped = hf()(torch.zeros(1, 1, dtype=torch.long), torch.tensor(logits[None]))[0].numpy()
    expected = set(np.flatnonzero(np.isfinite(warped)).tolist())
    assert _kept(Sampler(SamplingParams(temperature=1.0, seed=0, **kw)), logits, 3000) == expected


def test_presence_and_frequency_penalties_follow_openai():
    logits = np.zeros(4, np.float32)
    s = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    s.out_counts.update([2, 2, 3])
    np.testing.assert_allclose(s._penalized(logits), [0, 0, -1.0, -0.75])


@pytest.mark.parametrize("kw,msg", [({"min_p": 1.5}, "--min-p must be in [0, 1]"),
                                    ({"repetition_penalty": 0.0}, "--repetition-penalty must be > 0"),
                                    ({"presence_penalty": 3.0}, "presence_penalty must be in [-2, 2]")])
def test_bad_sampling_values(kw, msg):
    from common.errors import UserError

    with pytest.raises(UserError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(**kw).validate()


def test_from_generation_config():
    gen = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "repetition_penalty": 1.1}
    assert SamplingParams.from_generation_config(gen) == SamplingParams(0.6, 20, 0.95, None, 0.0, 1.1)
    assert SamplingParams.from_generation_config({**gen, "do_sample": False}).temperature == 0.0
    assert SamplingParams.from_generation_config(gen, temperature=0.0, seed=3) == SamplingParams(0.0, 20, 0.95, 3,
                                                                                                   0.0, 1.1)


# stop strings and streaming text --------------------------------------------------------------
@pytest.mark.parametrize("pieces,stops", [
    (["st", "op"], True), (["stop"], True), (["st", "opera"], True), (["sto", "pper"], True),
    (["las", "topper"], True), (["s", "to", "pped"], True),
    (["stop", "at"], False), (["st", "op", "at"], False), (["st", "opera", "tion"], False),
])
def test_stop_strings_follow_hf_examples(pieces, stops):
    """The examples of HF's StopStringCriteria: a match must overlap the last token."""
    m = StopStrings(["stop"])
    text, hit = "", None
    for p in pieces:
        hit = m.find(text + p, len(text))
        text += p
        if hit and p is not pieces[-1]:
            break
    assert (hit is not None and p is pieces[-1]) == stops


def test_stop_holdback():
    m = StopStrings(["</end>", "xyz"])
    assert m.holdback("abc</e") == 3 and m.holdback("abcxy") == 2 and m.holdback("abc") == 0


def test_incremental_decoder_multibyte(model):
    tok = model.tokenizer
    text = "héllo wörld — 你好 🙂 done"
    ids = tok.encode(text, add_special_tokens=False).ids
    d = IncrementalDecoder(tok)
    out = "".join(d.push(i) for i in ids) + d.flush()
    assert out == text == d.text


# Model.generate defaults and stops ------------------------------------------------------------
def test_generate_defaults_come_from_the_model(model, monkeypatch):
    gen = json.loads((model.model_dir / "generation_config.json").read_text())
    assert model.default_sampling() == SamplingParams.from_generation_config(gen)
    assert set(gen["eos_token_id"]) <= model.default_stop_ids()
    first = next(iter(model.generate([5, 6, 7], 4, SamplingParams())))
    monkeypatch.setattr(model, "default_stop_ids", lambda: {first})  # EOS = what greedy says first
    assert list(model.generate([5, 6, 7], 10, SamplingParams())) == [first]
    assert model.last_stats.finish_reason == "stop" and model.last_stats.stop == first
    monkeypatch.setattr(model, "generation_config", {"max_new_tokens": 3})  # greedy, no EOS, 3 tokens
    assert len(list(model.generate([5, 6, 7], stop_ids=set()))) == 3
    assert model.last_stats.finish_reason == "length"


def test_generate_stop_strings_and_cancel(model):
    ids = model.tokenizer.encode("Once upon a time").ids
    out = list(model.generate(ids, 20, SamplingParams(), set()))
    full = model.tokenizer.decode(out)
    stop = full[-4:-2]
    cut = list(model.generate(ids, 20, SamplingParams(), set(), stop_strings=[stop]))
    st = model.last_stats
    assert st.finish_reason == "stop" and st.stop == stop and st.stop_index == full.find(stop)
    assert cut == out[:len(cut)] and stop in st.text  # HF keeps the stop string in the output
    calls = iter(range(100))
    list(model.generate(ids, 20, SamplingParams(), set(), should_stop=lambda: next(calls) >= 3))
    assert model.last_stats.finish_reason == "cancelled" and model.last_stats.new_tokens == 3


# the generate CLI -----------------------------------------------------------------------------
def _json_run(capsys, mod, *args: str) -> dict:
    assert generate_cli.main([str(mod), "--json", "--max-new-tokens", "6", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_prompt_sources_and_json(mod, tmp_path, monkeypatch, capsys):
    a = _json_run(capsys, mod, "--prompt", "hello world", "--temperature", "0", "--min-p", "0.1")
    assert a["finish_reason"] in ("stop", "length") and a["max_new_tokens"] == 6
    assert a["sampling"] == {**SamplingParams(0.0, 20, 0.95, None, 0.1).as_dict()}  # top-k/p from the model
    f = tmp_path / "p.txt"
    f.write_text("hello world")
    assert _json_run(capsys, mod, "--prompt-file", str(f), "--temperature", "0")["text"] == a["text"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hello world")))
    assert _json_run(capsys, mod, "--prompt", "-", "--temperature", "0")["text"] == a["text"]
    s = _json_run(capsys, mod, "--prompt", "hello world", "--temperature", "0", "--stop", a["text"][2:4])
    assert s["finish_reason"] == "stop" and s["stop"] == a["text"][2:4]


def test_checks_happen_before_weights_upload(mod, model_dir, tmp_path, monkeypatch, capsys):
    import runtime.api

    def no_upload(*_a, **_kw):
        raise AssertionError("weights were uploaded before the flags/prompt/tokenizer were checked")

    monkeypatch.setattr(runtime.api.Model, "__init__", no_upload)
    run = generate_cli.main
    assert "--top-p must be in (0, 1]" in error_line(capsys, run, [str(mod), "--prompt", "x", "--top-p", "0"])
    assert "--min-p must be in [0, 1]" in error_line(capsys, run, [str(mod), "--prompt", "x", "--min-p", "2"])
    assert "no prompt" in error_line(capsys, run, [str(mod)])
    assert "not both" in error_line(capsys, run, [str(mod), "--prompt", "x", "--prompt-file", "y"])
    assert "No such file" in error_line(capsys, run, [str(mod), "--prompt-file", str(tmp_path / "missing")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ab\xff")
    assert "not valid UTF-8" in error_line(capsys, run, [str(mod), "--prompt-file", str(bad)])
    assert "the prompt is empty" in error_line(capsys, run, [str(mod), "--prompt", ""])
    assert "exceeds the compiled context" in error_line(capsys, run, [str(mod), "--prompt", "w " * 200])
    assert "--system needs --chat" in error_line(capsys, run, [str(mod), "--prompt", "x", "--system", "s"])
    broken = tmp_path / "m"
    shutil.copytree(model_dir("tiny", "f32"), broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert "cannot be read as a tokenizer" in error_line(capsys, run, [str(mod), "--prompt", "x", "--model-dir",
                                                                       str(broken)])


def test_progress_bar_leaves_no_junk_on_a_tty():
    """Each redraw erases the line first, so the shorter final line leaves no bar behind."""
    import re

    from common.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = Progress("uploading weights", 3, out)
    for _ in range(3):
        bar.step()
    bar.done()
    shown = out.getvalue().split("\r\x1b[2K")  # what the terminal shows: the text after the last erase
    assert re.fullmatch(r"uploading weights: 3/3 done in \d+\.\ds\n", shown[-1])
    assert all("\n" not in s for s in shown[:-1])  # the bar redraws in place, never scrolls


def test_compile_checks_out_before_building_kernels(model_dir, tmp_path, capsys):
    from frontend import compile as compile_cli

    for out in ("/proc/qwen3vk/out", str(tmp_path / "file")):
        (tmp_path / "file").write_text("x")
        rc = compile_cli.main([str(model_dir("tiny", "f32")), "-o", out, "--no-cache"])
        err = capsys.readouterr().err
        assert rc == 2 and "building kernels" not in err and "tracing" not in err.lower(), err
        assert "cannot write there" in err or "exists and is not a directory" in err
