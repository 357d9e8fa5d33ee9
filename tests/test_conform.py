"""`npgemma conform`: the case set, the table, and a stand-in peer with deliberate faults (in
tests/peers/standin.py) whose every fault the diagnosis names, in this process and through the
subprocess protocol another interpreter uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from npgemma import cli
from npgemma.compare import conform
from npgemma.compare.catalogue import CATALOGUE

STANDIN = str(Path(__file__).parent / "peers" / "standin.py") + ":run"
PG1, PG2 = "pg1-hub-f32", "pg2-hub-caption"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("conform")


def _conform(capsys, workdir, *extra, cases=f"{PG1},{PG2}"):
    rc = cli.main(["conform", "--against", STANDIN, "--workdir", str(workdir), "--cases", cases,
                   "--json", "--quiet", "--max-new-tokens", "4", *extra])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


def test_the_case_set_covers_what_the_diagnosis_needs():
    names = {c.name for c in conform.CASES}
    assert len(names) == len(conform.CASES)
    layouts = {c.layout for c in conform.CASES}
    assert layouts == {"hub", "v4.52", "v5", "v5-save"}
    by_name = {c.name: c for c in conform.CASES}
    for c in conform.CASES:  # a sibling differs in the one property its case is there for
        assert c.sibling is None or (by_name[c.sibling].sibling is None and c.trap in CATALOGUE)
    assert {c.dtype for c in conform.CASES} == {"float32", "bfloat16"}
    assert any(c.shards > 1 for c in conform.CASES) and any(c.image == "gray" for c in conform.CASES)
    prompts = " ".join(c.prompt for c in conform.CASES)
    assert "detect" in prompts and "segment" in prompts and "answer en" in prompts
    g2 = [c.config for c in conform.CASES if c.config.get("text") == "gemma2"]
    assert g2 and all(c["query_pre_attn_scalar"] != c.get("head_dim", 16) for c in g2)
    sizes = {c.config["image_size"] for c in conform.CASES}
    assert {conform.BASE, conform.LARGE} <= sizes  # image tokens = head_dim, and != head_dim


def test_a_faultless_stand_in_passes(capsys, workdir, monkeypatch):
    monkeypatch.delenv("NPGEMMA_STANDIN_FAULT", raising=False)
    rc, got, err = _conform(capsys, workdir)
    assert rc == 0 and got["ok"] and err == "" and got["summary"] == "all 2 cases pass"


@pytest.mark.parametrize("fault, case, names", [
    ("bilinear-no-antialias", PG1, None),
    ("imagenet-normalize", PG2, None),
    ("two-way-window,head-dim-query-scale", PG2, ["head-dim-query-scale", "two-way-window"]),
    ("gemma2-as-gemma1", PG2, ["gemma2-as-gemma1"]),
    ("no-sliding-window", PG2, ["no-sliding-window"]),
    ("vocab-cut", PG1, ["vocab-cut-at-image-token"]),
])
def test_each_fault_of_the_stand_in_is_diagnosed_by_name(fault, case, names, capsys, workdir,
                                                         monkeypatch):
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", fault)
    rc, got, err = _conform(capsys, workdir, cases=case)
    (result,) = got["cases"]
    assert rc == 1 and not result["ok"] and result["explained"], result["verdict"]
    if names is None:  # a processor trap: the model matches
        assert result["verdict"].startswith("the model matches; the processor differs")
        assert fault in result["verdict"] and result["cells"]["pixels"] == "FAIL"
    else:
        assert sorted(result["deviations"]) == names
    assert "every failure is explained" in err


@pytest.mark.parametrize("fault, case", [("head-dim-from-image-tokens", "pg1-448"),
                                         ("no-convert-rgb", "pg1-gray-image")])
def test_a_case_the_peer_cannot_load_is_a_row_with_its_cause(fault, case, capsys, workdir,
                                                            monkeypatch):
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", fault)
    rc, got, _ = _conform(capsys, workdir, cases=case)  # its sibling runs on demand
    (failed,) = got["cases"]
    assert rc == 1 and failed["cells"]["load"] == "FAIL"
    assert [s["case"] for s in got["siblings_run"]] == [PG1] and got["siblings_run"][0]["ok"]
    assert failed["explained"] and failed["error"]
    trap = next(c.trap for c in conform.CASES if c.name == case)
    assert failed["verdict"].startswith(CATALOGUE[trap].explain) and failed["deviations"] == [trap]


@pytest.mark.parametrize("python", [None, sys.executable])
def test_a_case_the_peer_declines_is_not_supported_rather_than_failed(python, capsys, workdir,
                                                                      monkeypatch):
    """An adapter's NotImplementedError (transformers has no sdpa for Gemma 2) is an n/a row with
    its reason, in this process and through the subprocess protocol; declining every case fails."""
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "declines-gemma2")
    extra = ["--python", python] if python else []
    rc, got, err = _conform(capsys, workdir, *extra)
    ran, declined = got["cases"]
    assert rc == 0 and got["ok"] and err == "" and ran["ok"] and ran["unsupported"] is None
    assert declined["cells"] == {"load": "n/a", "ids": "-", "pixels": "-", "hidden": "-",
                                 "logits": "-", "tokens": "-"}
    assert declined["unsupported"] == "this stand-in has no Gemma 2"
    assert got["summary"] == ("every case it runs passes (1 of 2); 1 not supported by the "
                              f"implementation, by its own account ({PG2})")
    rc, got, err = _conform(capsys, workdir, *extra, cases=PG2)
    assert rc == 1 and not got["ok"] and got["summary"].startswith("no case run")


@pytest.mark.parametrize("python", [None, sys.executable])
def test_a_batch_case_judges_each_row_as_if_alone(python, capsys, workdir, monkeypatch):
    """pg2-batch: three rows, prompts of three lengths, one call with lists. A correct batch
    passes; one that runs row 0's image for every row is named, row by row; an implementation
    without batches declines it."""
    extra = ["--python", python] if python else []
    monkeypatch.delenv("NPGEMMA_STANDIN_FAULT", raising=False)
    rc, got, _ = _conform(capsys, workdir, *extra, cases="pg2-batch")
    (result,) = got["cases"]
    assert rc == 0 and result["ok"], result["verdict"]
    stages = [s["stage"] for s in result["report"]["stages"]]
    assert {s.split(":")[0] for s in stages} == {"row 0", "row 1", "row 2"}
    assert "row 2: greedy tokens" in stages
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "batch-first-image")
    rc, got, _ = _conform(capsys, workdir, *extra, cases="pg2-batch")
    (result,) = got["cases"]
    assert rc == 1 and result["explained"] and result["cells"]["pixels"] == "FAIL"
    assert result["deviations"] == ["batch-image-of-another-row"] * 2
    assert "row 1: the implementation ran row 0's image" in result["verdict"]
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "batch-shifted-features")
    rc, got, _ = _conform(capsys, workdir, *extra, cases="pg2-batch")
    (result,) = got["cases"]
    assert rc == 1 and result["explained"], result["verdict"]
    padded = [i for i, r in enumerate(result["report"]["rows"]) if not r["ok"]]
    assert padded and result["deviations"] == ["batch-image-features-shifted-by-padding"] * len(padded)
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "no-batch")
    rc, got, _ = _conform(capsys, workdir, *extra, cases=f"{PG2},pg2-batch")
    assert rc == 0 and got["cases"][1]["unsupported"] == "this stand-in takes one input at a time"


def test_the_subprocess_protocol_brings_the_arrays_back(capsys, workdir, monkeypatch):
    """--python runs the adapter in that interpreter: here this one, in a child process."""
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "two-way-window,head-dim-query-scale")
    rc, got, _ = _conform(capsys, workdir, "--python", sys.executable, cases=PG2)
    (result,) = got["cases"]
    assert rc == 1 and sorted(result["deviations"]) == ["head-dim-query-scale", "two-way-window"]


def test_a_peer_missing_from_the_interpreter_is_a_clear_row(capsys, workdir):
    rc = cli.main(["conform", "--against", "no_such_peer_module:run", "--python", sys.executable,
                   "--workdir", str(workdir), "--cases", PG1, "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and "ModuleNotFoundError: No module named 'no_such_peer_module'" in out
    rc = cli.main(["conform", "--against", STANDIN, "--python", "/no/such/python",
                   "--workdir", str(workdir), "--cases", PG1, "--quiet"])
    out, _ = capsys.readouterr()
    assert rc == 1 and "--python /no/such/python: no such interpreter" in out


def test_markdown_and_the_table(capsys, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "no-sliding-window")
    md = tmp_path / "table.md"
    rc = cli.main(["conform", "--against", STANDIN, "--workdir", str(workdir), "--cases",
                   f"{PG1},{PG2}", "--markdown", str(md), "--quiet", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert rc == 1 and lines[0].split()[:7] == ["case", "load", "ids", "pixels", "hidden",
                                                "logits", "tokens"]
    assert lines[1].startswith(PG1) and lines[2].startswith(PG2) and "matches big_vision" in lines[2]
    assert lines[-1].startswith("1 of 2 cases fail; every failure is explained")
    text = md.read_text().splitlines()
    assert text[2].startswith("| case | load |") and text[4].startswith(f"| {PG1} | ok |")


def test_cases_that_match_nothing_are_an_error(capsys):
    rc = cli.main(["conform", "--against", "torch", "--cases", "nothing*"])
    assert rc == 2 and "matches none of" in capsys.readouterr().err


# ---- timeouts, crashes sorted by cause, pad faults: each fault written here as a port's own code

SLEEPER = '''
import time

def run(model_dir, image, prompt, max_new_tokens=8):
    time.sleep(20)   # a hung implementation
'''


@pytest.mark.parametrize("python", [None, sys.executable])
def test_a_hung_adapter_is_a_timed_out_row_and_the_run_goes_on(python, capsys, workdir,
                                                              tmp_path):
    path = tmp_path / "sleeper.py"
    path.write_text(SLEEPER)
    extra = ["--python", python] if python else []
    rc = cli.main(["conform", "--against", f"{path}:run", "--workdir", str(workdir), "--cases",
                   f"{PG1},{PG2}", "--json", "--quiet", "--timeout", "1", *extra])
    got = json.loads(capsys.readouterr().out)
    assert rc == 1 and not got["ok"] and len(got["cases"]) == 2  # both cases ran, both are rows
    for r in got["cases"]:
        assert r["verdict"] == "timed out after 1 s" and r["cells"]["load"] == "timeout"
        assert r["timed_out"] and not r["ok"] and r["seconds"] < 10
    assert "timed out: " in got["summary"]


CRASHER = '''
import json
import os

import npgemma

def run(model_dir, image, prompt, max_new_tokens=8):
    fault = os.environ["CRASH_FAULT"]
    with open(os.path.join(model_dir, "config.json")) as f:
        text = json.load(f)["text_config"]
    gemma2 = text.get("model_type") == "gemma2"
    if fault == "no-gemma2" and gemma2:
        raise KeyError("gemma2")
    if fault == "kv" and text.get("num_key_value_heads", 1) > 1:  # a mask built for one head
        raise RuntimeError("The size of tensor a (2) must match the size of tensor b (1)")
    pipe = npgemma.load(model_dir)
    length = len(pipe.processor(image, prompt).input_ids) + max_new_tokens
    if fault == "window" and gemma2 and length > text["sliding_window"]:
        raise IndexError("index 4 is out of bounds for dimension 2 with size 4")
    tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
    return {"logits": pipe.logits(image, prompt, positions=slice(None)), "token_ids": tokens}
'''


@pytest.mark.parametrize("fault, case, cause", [
    ("no-gemma2", PG2, "no-gemma2"),
    ("kv", PG2, "prefix-mask-one-kv-head"),
    ("kv", "pg1-kv2", "prefix-mask-one-kv-head"),
    ("window", PG2, "fails-past-window"),
])
def test_a_crash_is_sorted_by_cause_with_siblings_run_on_demand(fault, case, cause, capsys,
                                                               workdir, tmp_path, monkeypatch):
    """Only the crashing case is selected: the siblings that sort it run on demand."""
    path = tmp_path / "crasher.py"
    path.write_text(CRASHER)
    monkeypatch.setenv("CRASH_FAULT", fault)
    rc = cli.main(["conform", "--against", f"{path}:run", "--workdir", str(workdir), "--cases",
                   case, "--json", "--quiet", "--max-new-tokens", "2"])
    got = json.loads(capsys.readouterr().out)
    (r,) = got["cases"]
    assert rc == 1 and r["cells"]["load"] == "FAIL" and r["explained"], r["verdict"]
    assert r["deviations"] == [cause] and r["verdict"].startswith(CATALOGUE[cause].explain)
    assert got["siblings_run"]  # run although --cases left them out


def test_the_new_cases_pair_up():
    """PaliGemma 1 gets a left-padded batch; PaliGemma 2 a case shorter than its window beside
    one longer; one and two key/value heads side by side; batch rows all RGB."""
    by = {c.name: c for c in conform.CASES}
    assert by["pg1-batch"].config.get("text", "gemma") == "gemma" and by["pg1-batch"].batch
    short, long_ = by["pg2-short"].config, by["pg2-kv1"].config
    tokens = (short["image_size"] // 14) ** 2 + 8  # image tokens + a short prompt and answer
    assert short["sliding_window"] > tokens > long_["sliding_window"]
    assert short["num_key_value_heads"] == 2 and long_["num_key_value_heads"] == 1
    assert by["pg1-kv2"].config["num_key_value_heads"] == 2 and "num_key_value_heads" not in \
        by["pg1-hub-f32"].config  # tiny_config's default: one
    for name in ("pg1-batch", "pg2-batch"):
        kinds = [k for k, _ in by[name].batch]
        assert "gray" not in kinds and len(set(kinds)) == len(kinds)


def test_list_traps_reads_the_catalogue(capsys):
    with pytest.raises(SystemExit) as exit_:  # parity's: before its required arguments
        cli.main(["parity", "--list-traps"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("bgr-order  [processor]")
    rc = cli.main(["conform", "--list-traps"])
    out = capsys.readouterr().out
    assert rc == 0
    for name, trap in CATALOGUE.items():
        assert f"{name}  [{trap.family}]" in out
    assert {t.family for t in CATALOGUE.values()} == {"processor", "math", "decode-time", "batch",
                                                       "load", "crash", "config",
                                                       "quantization"}
    from npgemma.compare.catalogue import listing

    docs = (Path(__file__).parents[1] / "docs" / "conformance.md").read_text()
    table = docs.split("<!-- traps: npgemma conform --list-traps --markdown -->\n")[1]
    assert table.split("\n<!-- /traps -->")[0] == listing(markdown=True)


BATCH_PORT = '''
import os

import numpy as np
import npgemma
from npgemma import gemma, paligemma

PAD01 = {}
EMBED = {}
BLIND = {}
SAVED = {}


def _added(q, k, v, mask, scale, logit_cap=None):
    """The port's decoder attention (as transformers 4.41's PaliGemma): in its prompt pass the
    0/1 mask's outer product with itself is added to the scores as it is; its decode steps mask
    the pads as they should."""
    n, kv = q.shape[1], k.shape[1]
    k, v = np.repeat(k, n // kv, axis=1), np.repeat(v, n // kv, axis=1)  # [B, N, S, H]
    scores = np.einsum("bnlh,bnsh->bnls", q, k) * np.float32(scale)
    if q.shape[2] > 1:
        m = PAD01["mask"]  # [B, S]
        scores = scores + (m[:, :, None] * m[:, None, :])[:, None]
    else:
        scores = np.where(mask[:, None], scores, np.float32(-1e30))
    scores = scores - scores.max(axis=-1, keepdims=True)
    w = np.exp(scores)
    return np.einsum("bnls,bnsh->bnlh", w / w.sum(axis=-1, keepdims=True), v).astype(np.float32)


def _blind_spread(q, k, v, mask, scale, logit_cap=None):
    """Its decode attention over a rolling window cache: a row whose every cached key is
    masked (the dtype's minimum added to each score) weighs the last `window` keys evenly."""
    out = SAVED["attention"](q, k, v, mask, scale=scale, logit_cap=logit_cap)
    n, kv, w = q.shape[1], k.shape[1], BLIND["window"]
    for b in np.flatnonzero(~mask.any(axis=(1, 2))):
        vv = np.repeat(v[b], n // kv, axis=0)  # [N, S, H]
        out[b] = vv[:, -w:].mean(axis=1, keepdims=True)
    return out


def _zeroed_pads(table, input_ids, text):
    """Its merge: the pad tokens' embeddings are zeros."""
    x = EMBED["f"](table, input_ids, text)
    return np.where((input_ids == 0)[..., None], np.float32(0), x) if input_ids.shape[1] > 1 else x


def run(model_dir, image, prompt, max_new_tokens=8):
    fault = os.environ["BATCH_FAULT"]
    pipe = npgemma.load(model_dir)
    if not isinstance(prompt, list):
        tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
        return {"logits": pipe.logits(image, prompt, positions=slice(None)), "token_ids": tokens}
    cfg, p = pipe.cfg, pipe.params
    b = pipe.processor.batch(image, prompt)
    valid = b.attention_mask.astype(bool)
    prompt_valid, (rows, n) = valid.copy(), valid.shape
    prefix = valid.copy()
    saved, EMBED["f"] = gemma.attention, gemma.embed
    SAVED["attention"] = saved
    added = fault.startswith("added")
    if added:
        gemma.attention = _added
        gemma.embed = _zeroed_pads
    try:
        PAD01["mask"] = valid.astype(np.float32)
        see = np.ones_like(valid) if added else valid
        feats = paligemma.encode_image(p, b.pixel_values, cfg)
        cache = paligemma.init_cache(cfg, rows, n + max_new_tokens)
        positions = np.cumsum(valid, axis=1)
        if added:  # its positions: the mask's cumsum, the pads at 1
            positions = np.where(valid, positions, 1)
        logits, cache = paligemma.forward(p, cfg, b.input_ids, positions,
                                          paligemma.attention_masks(cfg, see, prefix, 0), feats,
                                          cache=cache)
        steps, tokens = [logits[:, -1]], []
        for _ in range(max_new_tokens):
            token = np.argmax(steps[-1], axis=-1)
            tokens.append(token)
            valid = np.concatenate([valid, np.ones((rows, 1), bool)], axis=1)
            prefix = np.concatenate([prefix, np.zeros((rows, 1), bool)], axis=1)
            s = valid.shape[1]
            PAD01["mask"] = valid.astype(np.float32)
            if fault == "cache-length":  # the step's position: the padded cache's length
                position = np.full((rows, 1), s)
            else:
                position = valid.sum(axis=1, keepdims=True)
            if fault == "added-minus-1":  # and its decode steps one position short
                position = position - 1
            masks = paligemma.attention_masks(cfg, valid, prefix, s - 1)
            window = cfg.text_config.sliding_window
            if fault == "rolling" and "sliding_attention" in masks and s > window:
                # a rolling cache of the last `window` keys, the padding mask's first columns;
                # a row that sees none of them: eager attention's even spread over the window
                rolled = np.zeros((rows, 1, s), bool)
                rolled[:, 0, s - window:] = valid[:, :window]
                masks["sliding_attention"] = rolled
                BLIND["window"] = window
                gemma.attention = _blind_spread
            step, cache = paligemma.forward(p, cfg, token[:, None], position, masks,
                                            cache=cache, last_only=True)
            if fault == "rolling":
                gemma.attention = saved
            steps.append(step[:, -1])
    finally:
        gemma.attention, gemma.embed = saved, EMBED["f"]
    out = []
    for i in range(rows):
        row = [int(t[i]) for t in tokens]
        if cfg.eos_token_id in row:
            row = row[:row.index(cfg.eos_token_id) + 1]
        out.append({"logits": logits[i][prompt_valid[i]], "token_ids": row,
                    "step_logits": np.stack([s[i] for s in steps[:len(row)]]) if row else None})
    return out
'''


@pytest.mark.parametrize("fault, case, trap", [
    ("added", "pg1-batch", "mask-added-unconverted"),
    ("rolling", "pg2-batch", "rolling-window-pad-mask"),
    ("cache-length", "pg1-batch", "decode-positions-from-cache-length"),
])
def test_a_pad_fault_of_a_batch_is_named_on_its_padded_rows(fault, case, trap, capsys, workdir,
                                                           tmp_path, monkeypatch):
    path = tmp_path / "batch_port.py"
    path.write_text(BATCH_PORT)
    monkeypatch.setenv("BATCH_FAULT", fault)
    rc, got, _ = _conform(capsys, workdir, "--against", f"{path}:run", cases=case)
    (r,) = got["cases"]
    assert rc == 1 and r["explained"], r["verdict"]
    padded = [i for i, row in enumerate(r["report"]["rows"]) if not row["ok"]]
    assert padded and r["deviations"] == [trap] * len(padded), r["verdict"]
    monkeypatch.setenv("BATCH_FAULT", "none")  # the same port without the fault passes
    rc, got, _ = _conform(capsys, workdir, "--against", f"{path}:run", cases=case)
    assert rc == 0, got["cases"][0]["verdict"]


def test_a_padded_row_with_two_faults_is_named_by_the_pair(capsys, workdir, tmp_path,
                                                          monkeypatch):
    """As transformers 4.41: its padded rows add the 0/1 mask unconverted in the prompt pass
    *and* feed each decode step one position short; its unpadded row has the decode fault only."""
    path = tmp_path / "batch_port.py"
    path.write_text(BATCH_PORT)
    monkeypatch.setenv("BATCH_FAULT", "added-minus-1")
    rc, got, _ = _conform(capsys, workdir, "--against", f"{path}:run", cases="pg1-batch")
    (r,) = got["cases"]
    assert rc == 1 and r["explained"], r["verdict"]
    assert "`mask-added-unconverted` + `decode-positions-minus-1`" in r["verdict"], r["verdict"]
    assert set(r["deviations"]) == {"mask-added-unconverted", "decode-positions-minus-1"}


CRASHER_4_44 = '''
import json
import os

import npgemma

def run(model_dir, image, prompt, max_new_tokens=8):
    """As transformers 4.44 fails: a prefix mask built for one key/value head (a shape mismatch
    wherever K > 1, PaliGemma 1 and 2 alike); a PaliGemma 2 that gets past it fails at generate,
    looking for the window in the top-level config."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    text = config["text_config"]
    if text.get("num_key_value_heads", 1) > 1:
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (2) at "
                           "non-singleton dimension 1")
    if text.get("model_type") == "gemma2" and config.get("sliding_window") is None:
        raise ValueError("Setting `cache_implementation` to 'sliding_window' requires the model "
                         "config supporting sliding window attention")
    pipe = npgemma.load(model_dir)
    tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
    return {"logits": pipe.logits(image, prompt, positions=slice(None)), "token_ids": tokens}
'''


def test_a_crash_is_sorted_by_its_own_message_not_only_by_which_siblings_crash(
        capsys, workdir, tmp_path):
    """Every PaliGemma 2 case crashes, but not for want of Gemma 2: a shape mismatch where
    K > 1 (the same on PaliGemma 1) is the one-kv-head prefix mask, the K = 1 case's
    message names the window's config; neither is `no-gemma2`."""
    path = tmp_path / "crasher_4_44.py"
    path.write_text(CRASHER_4_44)
    rc = cli.main(["conform", "--against", f"{path}:run", "--workdir", str(workdir), "--cases",
                   "pg1-kv2,pg2-short,pg2-kv1,pg2-hub-caption", "--json", "--quiet",
                   "--max-new-tokens", "2"])
    got = json.loads(capsys.readouterr().out)
    causes = {r["case"]: r["deviations"] for r in got["cases"]}
    assert rc == 1 and all(r["explained"] for r in got["cases"]), got["summary"]
    assert causes == {"pg1-kv2": ["prefix-mask-one-kv-head"],
                      "pg2-short": ["prefix-mask-one-kv-head"],
                      "pg2-kv1": ["window-not-in-top-config"],
                      "pg2-hub-caption": ["prefix-mask-one-kv-head"]}, causes
