"""Oracle tier, named activations: a traced generation vs transformers 5.24.0's own outputs.

transformers (float32, eager attention) runs one uncached forward over the prompt plus the
generated tokens with `token_type_ids` 0 on the prompt and 1 on the answer (its prefix-LM mask)
and `output_attentions` / `output_hidden_states`; the vision tower's through
`model.model.get_image_features(pixel_values, output_attentions=True, output_hidden_states=True)`.
npgemma's trace ran the prefill and then one cached step per token; its stitched
[B, N, S, S] patterns, hidden states and logits must equal transformers' within the tolerance
table, on both backends (PaliGemma-1 with GQA; PaliGemma-2 with a window and soft caps).
"""

from __future__ import annotations

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

import npgemma  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402
from npgemma.inspection import trace as inspect  # noqa: E402
from npgemma.layers import rms_norm  # noqa: E402

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]
CASE_IDS = ("pg1-gqa-f32-sharded-v5", "pg2-gqa-bf16-single-v5save")
NEW_TOKENS = 6


@pytest.fixture(scope="module", params=CASE_IDS)
def oracle_run(request, tmp_path_factory):
    """(folder, image, prompt, HF's full-sequence outputs) for one case, computed once."""
    transformers.logging.set_verbosity_error()
    case = oc.CASE_BY_ID[request.param]
    folder = mk.write_case(case, tmp_path_factory.mktemp("oracle_inspect") / case.id)
    oracle = oc.Oracle(folder)
    image, prompt = oc.examples()[2]  # the longest prompt
    inputs = oracle.process(image, prompt)
    ref = inspect.trace(npgemma.load(folder), image, prompt, max_new_tokens=NEW_TOKENS,
                        names=["unembed.hook_logits"])
    steps = ref["unembed.hook_logits"].shape[1] - 1
    answer = torch.tensor([ref.token_ids[:steps]], dtype=torch.long)
    seq = torch.cat([inputs["input_ids"], answer], dim=1)
    types = torch.cat([inputs["token_type_ids"], torch.ones_like(answer)], dim=1)
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        out = oracle.model(input_ids=seq, pixel_values=pixels, token_type_ids=types,
                           attention_mask=torch.ones_like(seq), output_attentions=True,
                           output_hidden_states=True)
        vis = oracle.model.model.get_image_features(pixels, output_attentions=True,
                                                    output_hidden_states=True)
    assert len(out.attentions) == len(vis.attentions) == case.layers  # eager: real weights
    np_ = lambda t: t.detach().float().numpy()  # noqa: E731
    hf = dict(input_ids=inputs["input_ids"][0].numpy(), seq=seq.numpy(), logits=np_(out.logits),
              attentions=[np_(a) for a in out.attentions], hidden=[np_(h) for h in out.hidden_states],
              vis_attentions=[np_(a) for a in vis.attentions],
              vis_hidden=[np_(h) for h in vis.hidden_states], projector=np_(vis.pooler_output))
    return folder, image, prompt, hf


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_trace_equals_transformers(oracle_run, backend):
    folder, image, prompt, hf = oracle_run
    pipe = npgemma.load(folder, backend=backend)
    t = inspect.trace(pipe, image, prompt, max_new_tokens=NEW_TOKENS)
    np.testing.assert_array_equal(t.input_ids, hf["input_ids"])
    n = pipe.cfg.text_config.num_hidden_layers
    s = hf["seq"].shape[1]
    assert t["decoder.blocks.0.attn.hook_pattern"].shape[-1] == s
    for i in range(n):
        pre = f"decoder.blocks.{i}."
        assert_close(t[pre + "attn.hook_pattern"], hf["attentions"][i], "attention", what=pre + "pattern")
        # HF's hidden_states: [input, layer 0 .. n-2 outputs, final normed output].
        assert_close(t[pre + "hook_resid_pre"], hf["hidden"][i], "decoder_layer", what=pre + "resid_pre")
        if i < n - 1:
            assert_close(t[pre + "hook_resid_post"], hf["hidden"][i + 1], "decoder_layer",
                         what=pre + "resid_post")
    norm = pipe.backend.to_numpy(pipe.params["language_model"]["norm"]["weight"])
    last = rms_norm(t[f"decoder.blocks.{n - 1}.hook_resid_post"], norm, pipe.cfg.text_config.rms_norm_eps)
    assert_close(last, hf["hidden"][-1], "final_norm", what="final normed output")
    assert_close(t["unembed.hook_logits"], hf["logits"][:, t.prompt_len - 1:], "logits",
                 what="logits of each generated token")
    for i, a in enumerate(hf["vis_attentions"]):
        pre = f"vision.blocks.{i}."
        assert_close(t[pre + "attn.hook_pattern"], a, "attention", what=pre + "pattern")
        assert_close(t[pre + "hook_resid_post"], hf["vis_hidden"][i + 1], "vision_layer",
                     what=pre + "resid_post")
    assert_close(t["projector.hook_out"], hf["projector"], "projector", what="projector")
