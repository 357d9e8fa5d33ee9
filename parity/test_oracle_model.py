"""Oracle tier, model level: npgemma (numpy and torch backends) vs transformers 5.24.0.

Each case (`oracle_cases.CASES`) is a tiny random PaliGemma checkpoint written once per session
by `make_oracle_checkpoints.write_case` (transformers' own save_pretrained for the 5.x layouts,
npgemma's writer for the hub / 4.52 layouts). transformers runs in float32, eager attention,
with token_type_ids passed. Per case and backend: processor outputs, per-layer hidden states,
logits, greedy tokens (and the logits behind each), cached == uncached; for PaliGemma-2 also
that the window, the soft caps, the query scale and the layer types each change the output;
left-padded batches; torch bfloat16 vs transformers in bfloat16.

Run with -s to see the table of max abs differences (also:
`python -m parity.make_oracle_checkpoints DIR --report`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

try:
    from parity import make_oracle_checkpoints as mk
    from parity import oracle_cases as oc
except ImportError:  # parity/ itself on sys.path (pytest's prepend import mode)
    import make_oracle_checkpoints as mk
    import oracle_cases as oc

from npgemma.checkpoint.config_json import config_from_dict, load_config  # noqa: E402
from npgemma.checkpoint.weights import LAYOUTS, disk_name, expected_shapes  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402

pytestmark = [
    pytest.mark.oracle,
    # transformers' own PaliGemmaProcessor trips numpy 2's __array__(copy=) deprecation
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

ATOL = oc.FP32_ATOL          # logits (prefix and every generation step), absolute
BITES = 1e-3                 # a setting "matters" when dropping it moves the logits this much
RESULTS: dict[tuple[str, str, str], dict] = {}   # (case, backend, dtype) -> max abs diffs


class CaseRun:
    """One case's checkpoint, its transformers oracle and (lazily) npgemma's results."""

    def __init__(self, case: oc.Case, folder):
        self.case, self.folder = case, folder
        self.oracle = oc.Oracle(folder)
        self.examples = oc.examples()
        self.hf = [self.oracle.run(image, prompt) for image, prompt in self.examples]
        self._runners: dict = {}
        self._results: dict = {}

    def runner(self, backend: str, dtype: str = "float32") -> oc.Runner:
        if (backend, dtype) not in self._runners:
            self._runners[backend, dtype] = oc.Runner(self.folder, backend, dtype)
        return self._runners[backend, dtype]

    def results(self, backend: str) -> list[oc.NpResult]:
        if backend not in self._results:
            runner = self.runner(backend)
            self._results[backend] = [runner.run(im, p) for im, p in self.examples]
        return self._results[backend]

    def record(self, backend: str, dtype: str = "float32", **values) -> None:
        RESULTS.setdefault((self.case.id, backend, dtype), {}).update(values)


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory):
    return tmp_path_factory.mktemp("oracle_checkpoints")


_RUNS: dict[str, CaseRun] = {}  # one per case for the module: written and loaded once


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers_and_print_table():
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # processor notices
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards", "Loading weights"
    # Tiny models: one intra-op thread is faster, and torch's spinning OpenMP workers waste a
    # shared machine's cores (this file: 11 s with 1 thread, 50-140 s with 2 on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _RUNS.clear()
    transformers.utils.logging.enable_progress_bar()
    transformers.logging.set_verbosity(verbosity)
    if RESULTS:
        rows = [{"case": c, "backend": b, "dtype": d, **v} for (c, b, d), v in RESULTS.items()]
        print(f"\n\nmax abs differences, npgemma vs transformers {transformers.__version__}:\n"
              + oc.format_table(rows))


def cases(where=lambda case: True):
    """Parametrize a test over the cases `where` selects (grouped per case by pytest)."""
    chosen = [c for c in oc.CASES if where(c)]
    return pytest.mark.parametrize("case", chosen, ids=[c.id for c in chosen], scope="module")


@pytest.fixture
def run(case, checkpoint_root) -> CaseRun:
    if case.id not in _RUNS:
        _RUNS[case.id] = CaseRun(case, mk.write_case(case, checkpoint_root / case.id))
    return _RUNS[case.id]


BACKENDS = pytest.mark.parametrize("backend", oc.BACKENDS)


# ---- the checkpoint itself -------------------------------------------------------------------

@cases()
def test_checkpoint_files_and_hf_loading(run):
    """The folder holds the layout / dtype / sharding the case names, and transformers loaded
    every tensor — no missing, unexpected or mismatched keys — to exactly the values written."""
    case, folder = run.case, run.folder
    info = run.oracle.loading_info
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                     "error_msgs")), info
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if case.sharded:
        assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file(), shards
    else:
        assert shards == ["model.safetensors"]
    from safetensors import safe_open
    disk = {}
    for name in shards:
        with safe_open(str(folder / name), framework="pt") as f:
            disk |= {k: f.get_slice(k).get_dtype() for k in f.keys()}
    cfg = load_config(folder)
    assert set(disk) == {disk_name(k, case.layout) for k in expected_shapes(cfg)}, case.layout
    assert set(disk.values()) == {"F32" if case.dtype == "float32" else "BF16"}
    other = [lay for lay in LAYOUTS if lay != case.layout]
    assert all(set(disk) != {disk_name(k, lay) for k in expected_shapes(cfg)} for lay in other)
    # transformers put each written tensor where it belongs (in-memory names, fp32 upcast exact).
    loaded = dict(run.oracle.model.named_parameters())
    for name, value in mk.source_state(case).items():
        assert torch.equal(loaded[name], value.float()), name


@cases(lambda c: c.minimal_config)
def test_minimal_config_resolves_like_transformers(run):
    """A hub-style minimal config.json resolves (in transformers and in npgemma) exactly as the
    full config transformers wrote when it saved the model; npgemma's values are HF's."""
    from transformers import PaliGemmaConfig

    folder = run.folder
    minimal = json.loads((folder / "config.json").read_text())
    assert "head_dim" not in minimal["text_config"] and "rms_norm_eps" not in minimal["text_config"]
    hf_min = PaliGemmaConfig.from_pretrained(folder).to_dict()
    hf_full = PaliGemmaConfig.from_json_file(str(folder / "config.saved.json")).to_dict()
    for d in (hf_min, hf_full):
        d.pop("_name_or_path", None)
    assert hf_min == hf_full
    ours = load_config(folder)
    assert ours == config_from_dict(json.loads((folder / "config.saved.json").read_text()))
    hf = run.oracle.model.config
    t, v = hf.text_config, hf.vision_config
    assert ours.text_config.head_dim == t.head_dim == 256  # the Gemma default, not hidden/heads
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                 "hidden_act"):
        assert getattr(ours.text_config, name) == getattr(t, name), name
    assert ours.text_config.rope_theta == t.rope_parameters["rope_theta"]
    assert ours.text_config.tie_word_embeddings == hf.tie_word_embeddings
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "layer_norm_eps", "hidden_act"):
        assert getattr(ours.vision_config, name) == getattr(v, name), name
    assert ours.image_token_index == hf.image_token_id
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)


# ---- processor ---------------------------------------------------------------------------------

@cases()
def test_processor_matches_hf(run):
    proc = run.runner("numpy").pipe.processor
    for (image, prompt), hf in zip(run.examples, run.hf):
        got = proc(image, prompt)
        assert got.input_ids.tolist() == hf.input_ids.tolist(), prompt
        assert got.token_type_ids.tolist() == hf.token_type_ids.tolist(), prompt
        assert got.attention_mask.tolist() == hf.attention_mask.tolist(), prompt
        np.testing.assert_allclose(got.pixel_values, hf.pixel_values, rtol=0, atol=1e-6)


# ---- forward -----------------------------------------------------------------------------------

@cases()
@BACKENDS
def test_hidden_states_and_logits(run, backend):
    """Every vision layer, the projector, every decoder layer (input, each layer's output, the
    final norm) and the logits at every prompt position. Hidden states reach magnitudes ~10, so
    they are judged by the tolerance table (2e-5 + 2e-5 * max|ref|); logits by 2e-5 absolute."""
    worst = {"vision": 0.0, "projector": 0.0, "decoder": 0.0, "logits": 0.0}
    vision_layers = run.oracle.model.config.vision_config.num_hidden_layers
    for (image, prompt), ours, hf in zip(run.examples, run.results(backend), run.hf):
        assert len(ours.vision) == len(hf.vision) == vision_layers + 1
        for i, (a, b) in enumerate(zip(ours.vision, hf.vision)):
            c = assert_close(a, b, "vision_embeddings" if i == 0 else "vision_layer",
                             what=f"{prompt!r} vision hidden state {i}")
            worst["vision"] = max(worst["vision"], c.max_abs)
        c = assert_close(ours.projector, hf.projector, "projector", what=f"{prompt!r} projector")
        worst["projector"] = max(worst["projector"], c.max_abs)
        assert len(ours.decoder) == len(hf.decoder)
        for i, (a, b) in enumerate(zip(ours.decoder, hf.decoder)):
            # state 0 is the merged input: it carries the projector's (vision tower's) error
            last = i == len(hf.decoder) - 1
            kind = "projector" if i == 0 else "final_norm" if last else "decoder_layer"
            c = assert_close(a, b, kind, what=f"{prompt!r} decoder hidden state {i}")
            worst["decoder"] = max(worst["decoder"], c.max_abs)
        for got in (ours.logits, ours.pipe_logits):
            err = oc.max_abs(got, hf.logits)
            assert err <= ATOL, f"{prompt!r}: logits max abs err {err:.3g} > {ATOL}"
            worst["logits"] = max(worst["logits"], err)
    run.record(backend, **worst)


@cases()
def test_hf_oracle_runs_the_prefix_lm(run):
    """Guard on the oracle itself: without token_type_ids transformers 5.24 silently runs a
    causal prefill, which must differ from the bidirectional-prefix logits compared above."""
    image, prompt = run.examples[0]
    inputs = run.oracle.process(image, prompt)
    assert inputs["token_type_ids"].eq(0).all()
    del inputs["token_type_ids"]
    with torch.no_grad():
        causal = run.oracle.model(**inputs).logits[0].float().numpy()
    assert oc.max_abs(causal, run.hf[0].logits) > BITES


# ---- generation --------------------------------------------------------------------------------

@cases()
@BACKENDS
def test_greedy_matches_hf_generate(run, backend):
    """Greedy tokens equal `model.generate(do_sample=False, token_type_ids=..., attention_mask=...)`
    and so do the logits behind every generated token (cached decode on both sides)."""
    distinct = [len(set(hf.tokens)) for hf in run.hf]
    assert max(distinct) >= 3, f"weak case: HF's greedy outputs have {distinct} distinct tokens"
    worst = 0.0
    for (image, prompt), ours, hf in zip(run.examples, run.results(backend), run.hf):
        assert ours.tokens == hf.tokens, f"{prompt!r}: npgemma {ours.tokens} != HF {hf.tokens}"
        if hf.tokens:
            err = oc.max_abs(ours.step_logits, hf.step_logits)
            assert err <= ATOL, f"{prompt!r}: generation-step logits max abs err {err:.3g}"
            worst = max(worst, err)
    run.record(backend, step_logits=worst, tokens_equal=True, distinct=max(distinct))


@cases()
@BACKENDS
def test_cached_generation_equals_uncached_forward(run, backend):
    worst = 0.0
    for (image, prompt), ours in zip(run.examples, run.results(backend)):
        c = assert_close(ours.step_logits, ours.uncached_logits, "decode_step",
                         what=f"{prompt!r} cached vs uncached")
        assert c.max_abs <= ATOL, f"{prompt!r}: cached vs uncached max abs err {c.max_abs:.3g}"
        assert ours.uncached_logits.argmax(-1).tolist() == ours.tokens
        worst = max(worst, c.max_abs)
    run.record(backend, cached_vs_uncached=worst)


@cases(lambda c: c.batch)
@BACKENDS
def test_left_padded_batch_matches_hf(run, backend):
    """generate_batch over prompts of different lengths == HF's batched generate (padding as HF's
    processor pads) == each row generated alone."""
    images = oc.images()[:2]
    hf_rows, hf_inputs = run.oracle.generate_batch(images, oc.BATCH_PROMPTS)
    mask = hf_inputs["attention_mask"].numpy()
    assert (mask[:, 0] == 0).any(), "the prompts must differ in length (one row left-padded)"
    pipe = run.runner(backend).pipe
    batch = pipe.processor.batch(images, oc.BATCH_PROMPTS)
    assert batch.input_ids.tolist() == hf_inputs["input_ids"].tolist()
    assert batch.attention_mask.tolist() == mask.tolist()
    ours = pipe.generate_batch(images, oc.BATCH_PROMPTS, max_new_tokens=oc.MAX_NEW_TOKENS)
    assert [o.token_ids for o in ours] == hf_rows
    alone = [pipe.generate(im, p, max_new_tokens=oc.MAX_NEW_TOKENS).token_ids
             for im, p in zip(images, oc.BATCH_PROMPTS)]
    assert alone == hf_rows
    assert max(len(set(r)) for r in hf_rows) >= 3, hf_rows


# ---- PaliGemma-2: the settings bite ------------------------------------------------------------

@cases(lambda c: c.text == "gemma2")
def test_gemma2_settings_change_the_output(run):
    """Each Gemma-2 setting of the case moves npgemma's logits away from HF's when dropped (so
    the agreement above tests it): the soft caps, the query scale, the sliding window in the
    prefix (where 5.24 must *not* apply it) and during generation (where it must), and the
    layer types."""
    runner, cfg = run.runner("numpy"), run.runner("numpy").pipe.cfg
    t = cfg.text_config
    image, prompt = run.examples[0]
    hf, ours = run.hf[0], run.results("numpy")[0]
    prefix = len(hf.input_ids)
    assert prefix > t.sliding_window and len(ours.tokens) > 1
    assert t.head_dim != t.hidden_size // t.num_attention_heads
    assert t.query_pre_attn_scalar != t.head_dim

    def prefix_logits(**kw):
        ids = ours.input_ids
        return runner.forward(ids, np.ones(len(ids), bool), ours.pixel_values, **kw)[0]

    def moved(got, ref, what):
        err = oc.max_abs(got, ref)
        assert err > BITES, f"{what}: only moves the logits by {err:.3g}"

    moved(prefix_logits(cfg=oc.replace_text(cfg, attn_logit_softcapping=None)), hf.logits,
          "attn_logit_softcapping")
    moved(prefix_logits(cfg=oc.replace_text(cfg, final_logit_softcapping=None)), hf.logits,
          "final_logit_softcapping")
    moved(prefix_logits(cfg=oc.replace_text(cfg, query_pre_attn_scalar=t.head_dim)), hf.logits,
          "query_pre_attn_scalar")

    def window_the_prefix(masks):  # what a prefix-LM mask that also windowed the prefix would do
        q = np.arange(prefix)[:, None]
        k = np.arange(prefix)[None, :]
        return masks | {"sliding_attention": masks["sliding_attention"]
                        & (np.abs(q - k) < t.sliding_window)}

    moved(prefix_logits(edit_masks=window_the_prefix), hf.logits, "a windowed prefix")
    no_window = oc.replace_text(cfg, sliding_window=10 ** 6)
    moved(runner.uncached(image, prompt, ours.tokens, cfg=no_window), hf.step_logits,
          "sliding_window during generation")
    flipped = tuple("full_attention" if x == "sliding_attention" else "sliding_attention"
                    for x in t.layer_types)
    flipped_cfg = oc.replace_text(cfg, layer_types=flipped)
    moved(runner.uncached(image, prompt, ours.tokens, cfg=flipped_cfg), hf.step_logits,
          "layer_types")


# ---- bfloat16 ----------------------------------------------------------------------------------

@cases(lambda c: c.bf16_oracle)
def test_torch_bfloat16_matches_hf_bfloat16(run):
    """torch backend in bfloat16 vs transformers loaded in bfloat16 (eager): logits within the
    bfloat16 'logits' tolerance, identical greedy tokens."""
    worst, distinct = 0.0, []
    for prompt, c, ours, hf_tokens in oc.bf16_examples(run.folder):
        assert c.ok, f"{prompt!r} bf16 logits: {c}"
        assert ours == hf_tokens, f"{prompt!r} bf16 greedy: npgemma {ours} != HF {hf_tokens}"
        worst = max(worst, c.max_abs)
        distinct.append(len(set(hf_tokens)))
    assert max(distinct) >= 3, distinct
    run.record("torch", "bfloat16", logits=worst, tokens_equal=True, distinct=max(distinct))
