"""Mutation check of the model math: one-line breaks, each run against the fast tests that
should catch it. Not part of the default suite (pytest collects only test_*.py).

    python tests/mutation/run.py                 # every mutant; writes benchmarks/results/mutation.json
    python tests/mutation/run.py --only rope     # mutants whose id contains "rope"
    python tests/mutation/run.py --list          # the mutants, nothing run

Each mutant replaces one exact substring (which must occur exactly once in its file, on one
line) in a temporary copy of the repository's `npgemma/`, `tests/` and `parity/`; the real tree
is never written. The named tests then run in that copy (`pytest -x`, so the first failure
ends it). A mutant is *caught* when a test fails (or the run errors or times out) and *survives*
when the tests pass: a survivor names a property no test checks. Before the mutants, the same
tests run unmutated and must pass, or the score would mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "mutation.json"

LAYERS, MODEL, SAMPLING = "tests/test_layers.py", "tests/test_model.py", "tests/test_sampling.py"
PROCESSING, VQVAE = "tests/test_processing.py", "tests/test_vqvae.py"
ORACLE_PROC = "parity/test_oracle_processor.py"
T_LAYERS, T_MODEL = "parity/test_layers_parity.py", "parity/test_model_parity.py"
T_DECODE, T_VQVAE = "parity/test_decode_contract.py", "parity/test_vqvae_parity.py"
API = "tests/test_api.py"

# (id, file, exact original text, broken text, tests). The id says what the break means.
MUTANTS = [
    # ---- npgemma/layers.py
    ("rms-norm-w-not-1+w", "npgemma/layers.py", "* (F32(1.0) + as_f32(weight))", "* as_f32(weight)", [LAYERS]),
    ("rms-norm-eps-outside-sqrt", "npgemma/layers.py", "np.sqrt(ms + F32(eps))", "(np.sqrt(ms) + F32(eps))", [LAYERS]),
    ("rms-norm-sum-not-mean", "npgemma/layers.py", "ms = np.mean(x * x, axis=-1", "ms = np.sum(x * x, axis=-1", [LAYERS]),
    ("layer-norm-unbiased-var", "npgemma/layers.py", "var = np.mean(centered * centered, axis=-1, keepdims=True)", "var = np.var(x, axis=-1, ddof=1, keepdims=True)", [LAYERS]),
    ("layer-norm-eps-outside-sqrt", "npgemma/layers.py", "centered / np.sqrt(var + F32(eps))", "centered / (np.sqrt(var) + F32(eps))", [LAYERS]),
    ("layer-norm-no-bias", "npgemma/layers.py", "* as_f32(weight) + as_f32(bias)", "* as_f32(weight)", [LAYERS]),
    ("linear-bias-subtracted", "npgemma/layers.py", "y += as_f32(bias)", "y -= as_f32(bias)", [LAYERS]),
    ("gelu-cubic-constant", "npgemma/layers.py", "_GELU_CUBIC = F32(0.044715)", "_GELU_CUBIC = F32(0.0447)", [LAYERS]),
    ("gelu-sqrt-1-over-pi", "npgemma/layers.py", "F32(np.sqrt(2.0 / np.pi))", "F32(np.sqrt(1.0 / np.pi))", [LAYERS]),
    ("gelu-minus-x", "npgemma/layers.py", "t += x                      # x + 0.044715 x³", "t -= x", [LAYERS]),
    ("softmax-unstable", "npgemma/layers.py", "e = np.exp(x - x.max(axis=axis, keepdims=True))", "e = np.exp(x)", [LAYERS]),
    ("softcap-no-outer-cap", "npgemma/layers.py", "return cap * np.tanh(x / cap)", "return np.tanh(x / cap)", [LAYERS]),
    ("rope-exponent-over-half-dim", "npgemma/layers.py", ".astype(np.float32) / F32(head_dim)", ".astype(np.float32) / F32(head_dim // 2)", [LAYERS]),
    ("rope-theta-ignored", "npgemma/layers.py", "np.float64(theta) ** exponents", "np.float64(10000.0) ** exponents", [LAYERS, MODEL]),
    ("rope-interleaved-table", "npgemma/layers.py", "emb = np.concatenate([freqs, freqs], axis=-1)", "emb = np.repeat(freqs, 2, axis=-1)", [LAYERS]),
    ("rotate-half-sign-on-wrong-half", "npgemma/layers.py", "np.concatenate([-x[..., half:], x[..., :half]], axis=-1)", "np.concatenate([x[..., half:], -x[..., :half]], axis=-1)", [LAYERS]),
    ("rotate-half-no-sign", "npgemma/layers.py", "np.concatenate([-x[..., half:], x[..., :half]], axis=-1)", "np.concatenate([x[..., half:], x[..., :half]], axis=-1)", [LAYERS]),
    ("rope-minus-sin", "npgemma/layers.py", "return x * cos + rotate_half(x) * sin", "return x * cos - rotate_half(x) * sin", [LAYERS]),
    ("gqa-head-n-mod-k", "npgemma/layers.py", "qg = q.reshape(b, kv_heads, g, l, h)", "qg = q.reshape(b, g, kv_heads, l, h).swapaxes(1, 2)", [LAYERS]),
    ("attention-divides-by-scale", "npgemma/layers.py", "scores *= F32(scale)", "scores /= F32(scale)", [LAYERS]),
    ("attention-softcap-multiplies", "npgemma/layers.py", "scores /= cap", "scores *= cap", [LAYERS]),
    ("attention-mask-inverted", "npgemma/layers.py", "where=~mask[:, None, None]", "where=mask[:, None, None]", [LAYERS]),
    ("mask-value-minus-inf", "npgemma/layers.py", "MASK_VALUE = F32(np.finfo(np.float32).min)", "MASK_VALUE = F32(-np.inf)", [LAYERS]),
    ("attention-softmax-shift-by-min", "npgemma/layers.py", "scores -= scores.max(axis=-1, keepdims=True)", "scores -= scores.min(axis=-1, keepdims=True)", [LAYERS]),
    ("attention-softmax-wrong-axis", "npgemma/layers.py", "scores /= scores.sum(axis=-1, keepdims=True)", "scores /= scores.sum(axis=-2, keepdims=True)", [LAYERS]),
    ("split-heads-head-minor", "npgemma/layers.py", "x.reshape(b, l, num_heads, -1).transpose(0, 2, 1, 3)", "x.reshape(b, l, -1, num_heads).transpose(0, 3, 1, 2)", [LAYERS]),
    ("merge-heads-transposed", "npgemma/layers.py", "x.transpose(0, 2, 1, 3).reshape(b, l, n * h)", "x.transpose(0, 2, 3, 1).reshape(b, l, n * h)", [LAYERS]),
    ("attention-chunks-skipped", "npgemma/layers.py", "for i in starts[first::stride]:", "for i in starts[first::stride + 1]:", [LAYERS]),
    # ---- npgemma/_kernels.py
    ("bf16-even-shift-15", "npgemma/_kernels.py", "np.left_shift(pairs, 16, out=wide[0])", "np.left_shift(pairs, 15, out=wide[0])", [LAYERS]),
    ("bf16-odd-keeps-low-half", "npgemma/_kernels.py", "HIGH_HALF = np.uint32(0xFFFF0000)", "HIGH_HALF = np.uint32(0xFFFFFFFF)", [LAYERS]),
    ("bf16-odd-times-even-x", "npgemma/_kernels.py", "out += odd @ x_odd", "out += odd @ x_even", [LAYERS]),
    ("share-out-one-worker-short", "npgemma/_kernels.py", "for w in range(workers)]", "for w in range(workers - 1)]", [LAYERS]),
    ("row-blocks-skipped", "npgemma/_kernels.py", "for i in starts[first::stride]:", "for i in starts[first::stride + 1]:", [LAYERS]),
    ("slab-widening-truncates", "npgemma/_kernels.py", "np.copyto(wide, slab, casting=\"unsafe\")", "np.copyto(wide, slab.astype(np.float16), casting=\"unsafe\")", [LAYERS]),
    # ---- npgemma/siglip.py
    ("patches-column-major", "npgemma/siglip.py", "x.transpose(0, 2, 4, 1, 3, 5)", "x.transpose(0, 4, 2, 1, 3, 5)", [LAYERS, MODEL]),
    ("patch-kernel-h-w-swapped", "npgemma/siglip.py", "x.transpose(0, 2, 4, 1, 3, 5)", "x.transpose(0, 2, 4, 1, 5, 3)", [LAYERS, MODEL]),
    ("vision-positions-reversed", "npgemma/siglip.py", "return x + as_f32(position_embedding[\"weight\"])", "return x + as_f32(position_embedding[\"weight\"])[::-1]", [MODEL]),
    ("siglip-scale-by-width", "npgemma/siglip.py", "scale=(d // num_heads) ** -0.5", "scale=d ** -0.5", [MODEL]),
    ("siglip-attention-uses-ln2", "npgemma/siglip.py", "layer_norm(x, **layer_norm1, eps=cfg.layer_norm_eps), **self_attn", "layer_norm(x, **layer_norm2, eps=cfg.layer_norm_eps), **self_attn", [MODEL]),
    ("siglip-mlp-no-residual", "npgemma/siglip.py", "return x + feed_forward(layer_norm(x, **layer_norm2", "return feed_forward(layer_norm(x, **layer_norm2", [MODEL]),
    ("siglip-no-post-layernorm", "npgemma/siglip.py", "return layer_norm(x, **params[\"post_layernorm\"], eps=cfg.layer_norm_eps)", "return x", [MODEL]),
    ("siglip-mlp-no-gelu", "npgemma/siglip.py", "linear(gelu_tanh(linear(x, **fc1)), **fc2)", "linear(linear(x, **fc1), **fc2)", [MODEL]),
    # ---- npgemma/gemma.py, npgemma/config.py
    ("embed-scale-truncated", "npgemma/gemma.py", "np.float32(np.sqrt(cfg.hidden_size))", "np.float32(int(np.sqrt(cfg.hidden_size)))", [MODEL]),
    ("gated-mlp-gelu-on-up", "npgemma/gemma.py", "lambda g, u: gelu_tanh(g) * u", "lambda g, u: gelu_tanh(u) * g", [MODEL]),
    ("gemma2-no-post-attention-norm", "npgemma/gemma.py", "x + rms_norm(h, **p[\"post_attention_layernorm\"], eps=eps))", "x + h)", [MODEL]),
    ("gemma2-pre-ffn-norm-is-post-attn", "npgemma/gemma.py", "rms_norm(x, **p[\"pre_feedforward_layernorm\"]", "rms_norm(x, **p[\"post_attention_layernorm\"]", [MODEL]),
    ("gemma2-no-post-ffn-norm", "npgemma/gemma.py", "x + rms_norm(h, **p[\"post_feedforward_layernorm\"], eps=eps))", "x + h)", [MODEL]),
    ("gemma1-no-attention-residual", "npgemma/gemma.py", "x = hook(\"hook_resid_mid\", x + h)", "x = hook(\"hook_resid_mid\", h)", [MODEL]),
    ("gemma1-mlp-norm-is-input-norm", "npgemma/gemma.py", "rms_norm(x, **p[\"post_attention_layernorm\"], eps=eps), **p[\"mlp\"]))", "rms_norm(x, **p[\"input_layernorm\"], eps=eps), **p[\"mlp\"]))", [MODEL]),
    ("sliding-window-on-odd-layers", "npgemma/gemma.py", "cfg.layer_sliding_window(i) else", "cfg.layer_sliding_window(i ^ 1) else", [MODEL]),
    ("no-final-norm", "npgemma/gemma.py", "x = rms_norm(x, **params[\"norm\"], eps=cfg.rms_norm_eps)", "x = x", [MODEL]),
    ("final-softcap-uses-attention-cap", "npgemma/gemma.py", "softcap(logits, cfg.final_logit_softcapping)", "softcap(logits, cfg.attn_logit_softcapping)", [MODEL]),
    ("no-attention-softcap", "npgemma/gemma.py", "logit_cap=cfg.attn_logit_softcapping)", "logit_cap=None)", [MODEL]),
    ("no-rope-on-keys", "npgemma/gemma.py", "hook(\"attn.hook_k\", apply_rope(k, cos, sin))", "hook(\"attn.hook_k\", k)", [MODEL]),
    ("gemma2-scale-head-dim", "npgemma/config.py", "base = self.query_pre_attn_scalar if self.is_gemma2 else self.head_dim", "base = self.head_dim", [MODEL]),
    ("query-scale-inverse-not-sqrt", "npgemma/config.py", "return float(base) ** -0.5", "return float(base) ** -1.0", [MODEL]),
    ("layer-types-swapped", "npgemma/config.py", "self.layer_types[layer_idx] == \"sliding_attention\" else None", "self.layer_types[layer_idx] == \"full_attention\" else None", [MODEL]),
    # ---- npgemma/paligemma.py
    ("image-features-reversed", "npgemma/paligemma.py", "out[is_image] = image_features.reshape(", "out[is_image] = image_features[:, ::-1].reshape(", [MODEL]),
    ("projector-no-bias", "npgemma/paligemma.py", "linear(image_features, **linear_params)", "linear(image_features, linear_params[\"weight\"])", [MODEL]),
    ("mask-strictly-causal", "npgemma/paligemma.py", "causal = k <= q", "causal = k < q", [MODEL]),
    ("window-plus-one", "npgemma/paligemma.py", "(q - k < sliding_window)", "(q - k <= sliding_window)", [MODEL]),
    ("window-minus-one", "npgemma/paligemma.py", "(q - k < sliding_window)", "(q - k < sliding_window - 1)", [MODEL]),
    ("no-prefix-lm", "npgemma/paligemma.py", "return (causal[None] | both_prefix) & valid[:, None, :]", "return causal[None] & valid[:, None, :]", [MODEL]),
    ("prefix-sees-suffix", "npgemma/paligemma.py", "both_prefix = is_prefix[:, q_start:, None] & is_prefix[:, None, :]", "both_prefix = is_prefix[:, q_start:, None] | is_prefix[:, None, :]", [MODEL]),
    ("padding-keys-visible", "npgemma/paligemma.py", "return (causal[None] | both_prefix) & valid[:, None, :]", "return causal[None] | both_prefix", [MODEL]),
    ("positions-zero-based", "npgemma/paligemma.py", "return np.cumsum(valid, axis=1, dtype=np.int64)", "return np.cumsum(valid, axis=1, dtype=np.int64) - 1", [MODEL]),
    ("positions-count-pads", "npgemma/paligemma.py", "return np.cumsum(valid, axis=1, dtype=np.int64)", "return np.cumsum(np.ones_like(valid), axis=1, dtype=np.int64)", [MODEL]),
    ("no-sliding-window", "npgemma/paligemma.py", "                                                    cfg.text_config.applied_window)", "                                                    None)", [MODEL]),
    ("last-only-takes-first", "npgemma/paligemma.py", "h = h[:, -1:]", "h = h[:, :1]", [MODEL]),
    ("lm-head-always-tied", "npgemma/paligemma.py", "head = params[\"lm_head\"][\"weight\"] if \"lm_head\" in params else lm[\"embed_tokens\"][\"weight\"]", "head = lm[\"embed_tokens\"][\"weight\"]", [MODEL]),
    # ---- npgemma/kv_cache.py
    ("cache-write-one-slot-back", "npgemma/kv_cache.py", "start, end = cache.length, cache.length + k.shape[2]", "start, end = max(cache.length - 1, 0), max(cache.length - 1, 0) + k.shape[2]", [MODEL]),
    ("cache-values-get-keys", "npgemma/kv_cache.py", "cache.values[layer_idx][:, :, start:end] = v", "cache.values[layer_idx][:, :, start:end] = k", [MODEL]),
    ("cache-returns-new-slots-only", "npgemma/kv_cache.py", "return cache.keys[layer_idx][:, :, :end], cache.values[layer_idx][:, :, :end]", "return cache.keys[layer_idx][:, :, start:end], cache.values[layer_idx][:, :, start:end]", [MODEL]),
    ("cache-advance-short", "npgemma/kv_cache.py", "cache.length += num_tokens", "cache.length += max(num_tokens - 1, 1)", [MODEL]),
    # ---- npgemma/vqvae.py
    ("same-padding-extra-on-top", "npgemma/vqvae.py", "return total // 2, total - total // 2", "return total - total // 2, total // 2", [VQVAE]),
    ("transpose-conv-kernel-not-flipped", "npgemma/vqvae.py", "flipped = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]", "flipped = weight.transpose(1, 0, 2, 3)", [VQVAE]),
    ("res-block-no-residual", "npgemma/vqvae.py", "return x + conv2d(h, vae[name + \".4.weight\"]", "return conv2d(h, vae[name + \".4.weight\"]", [VQVAE]),
    ("codes-column-major", "npgemma/vqvae.py", "table[codes].reshape(codes.shape[0], GRID, GRID, table.shape[1])", "table[codes].reshape(codes.shape[0], GRID, GRID, table.shape[1]).swapaxes(1, 2)", [VQVAE]),
    ("mask-input-not-doubled", "npgemma/vqvae.py", "(np.float32(2) * (masks - np.float32(0.5)))", "(masks - np.float32(0.5))", [VQVAE]),
    ("nearest-code-is-farthest", "npgemma/vqvae.py", "- np.float32(2) * flat @ table.T", "+ np.float32(2) * flat @ table.T", [VQVAE]),
    ("relu-is-abs", "npgemma/vqvae.py", "return np.maximum(x, np.float32(0))", "return np.abs(x)", [VQVAE]),
    # ---- npgemma/torch_backend/
    ("torch-rms-norm-w-not-1+w", "npgemma/torch_backend/layers.py", "return (out * (1.0 + weight.float())).type_as(x)", "return (out * weight.float()).type_as(x)", [T_LAYERS]),
    ("torch-rms-norm-eps-outside-sqrt", "npgemma/torch_backend/layers.py", "torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)", "(1.0 / (xf.square().mean(-1, keepdim=True).sqrt() + eps))", [T_LAYERS]),
    ("torch-gelu-erf", "npgemma/torch_backend/layers.py", "return F.gelu(x, approximate=\"tanh\")", "return F.gelu(x)", [T_LAYERS]),
    ("torch-rotate-half-sign", "npgemma/torch_backend/layers.py", "torch.cat([-x[..., half:], x[..., :half]], dim=-1)", "torch.cat([x[..., half:], -x[..., :half]], dim=-1)", [T_LAYERS]),
    ("torch-rope-interleaved", "npgemma/torch_backend/layers.py", "emb = torch.cat([freqs, freqs], dim=-1)", "emb = freqs.repeat_interleave(2, dim=-1)", [T_LAYERS]),
    ("torch-mask-bias-inverted", "npgemma/torch_backend/layers.py", "torch.where(mask, 0.0, mask_value(dtype))", "torch.where(mask, mask_value(dtype), 0.0)", [T_LAYERS]),
    ("torch-softcap-no-divide", "npgemma/torch_backend/layers.py", "return torch.tanh(x / cap) * cap", "return torch.tanh(x) * cap", [T_LAYERS]),
    ("torch-score-softcap-no-divide", "npgemma/torch_backend/layers.py", "scores.div_(cap).tanh_().mul_(cap)", "scores.tanh_().mul_(cap)", [T_LAYERS]),
    ("torch-embed-scale-unrounded", "npgemma/torch_backend/gemma.py", "return float(torch.tensor(math.sqrt(hidden_size), dtype=F32).to(dtype))", "return math.sqrt(hidden_size)", [LAYERS, T_MODEL]),
    ("torch-gemma2-no-post-attention-norm", "npgemma/torch_backend/gemma.py", "x + rms_norm(h, **p[\"post_attention_layernorm\"], eps=eps))", "x + h)", [T_MODEL]),
    ("torch-no-sliding-window", "npgemma/torch_backend/gemma.py", "biases[\"sliding_attention\" if cfg.layer_sliding_window(i) else \"full_attention\"]", "biases[\"full_attention\"]", [T_MODEL]),
    ("torch-siglip-scale-by-width", "npgemma/torch_backend/siglip.py", "scale=(d // num_heads) ** -0.5", "scale=d ** -0.5", [T_MODEL]),
    ("torch-patches-column-major", "npgemma/torch_backend/siglip.py", "x.permute(0, 2, 4, 1, 3, 5)", "x.permute(0, 4, 2, 1, 3, 5)", [T_MODEL]),
    ("torch-image-features-reversed", "npgemma/torch_backend/paligemma.py", "out[is_image] = image_features.reshape(", "out[is_image] = image_features.flip(1).reshape(", [T_MODEL]),
    ("torch-last-only-takes-first", "npgemma/torch_backend/paligemma.py", "h = h[:, -1:]", "h = h[:, :1]", [T_MODEL]),
    ("torch-cache-values-get-keys", "npgemma/torch_backend/kv_cache.py", "values[:, :, start:end] = v", "values[:, :, start:end] = k", [T_MODEL]),
    ("torch-decode-slot-one-back", "npgemma/torch_backend/kv_cache.py", "slot = cache.length.view(1)", "slot = (cache.length - 1).clamp(min=0).view(1)", [T_DECODE]),
    ("torch-decode-positions-zero-based", "npgemma/torch_backend/decode.py", "valid.sum(axis=1, dtype=np.int64)))", "valid.sum(axis=1, dtype=np.int64) - 1))", [T_DECODE]),
    ("torch-decode-window-plus-one", "npgemma/torch_backend/decode.py", "near = (state.slot - state.slots) < window", "near = (state.slot - state.slots) <= window", [T_DECODE]),
    ("torch-vqvae-relu-is-abs", "npgemma/torch_backend/vqvae.py", "torch.relu(", "torch.abs(", [T_VQVAE]),
    # ---- npgemma/generation/
    ("generated-tokens-are-prefix", "npgemma/generation/slots.py", "np.concatenate([self.is_prefix, np.zeros((b, count), bool)], axis=1)", "np.concatenate([self.is_prefix, np.ones((b, count), bool)], axis=1)", [MODEL]),
    ("decode-positions-restart", "npgemma/generation/slots.py", "return rope_positions(self.valid)[:, q_start:]", "return rope_positions(self.valid[:, q_start:])", [MODEL]),
    ("prompt-not-prefix", "npgemma/generation/slots.py", "return cls(valid, valid.copy())", "return cls(valid, np.zeros_like(valid))", [MODEL]),
    ("host-decode-query-slot-off", "npgemma/generation/numpy_backend.py", "slots, q = state.slots, state.length - 1", "slots, q = state.slots, state.length - 2", [MODEL]),
    ("top-k-drops-the-kth", "npgemma/generation/generate.py", "x = np.where(x < kth, -np.inf, x)", "x = np.where(x <= kth, -np.inf, x)", [SAMPLING]),
    ("top-k-keeps-k-minus-1", "npgemma/generation/generate.py", "np.partition(x, -k, axis=-1)[:, -k][:, None]", "np.partition(x, -k, axis=-1)[:, -k + 1][:, None]", [SAMPLING]),
    ("top-p-boundary-exclusive", "npgemma/generation/generate.py", "drop_sorted = before >= np.float32(gen.top_p)", "drop_sorted = before > np.float32(gen.top_p)", [SAMPLING]),
    ("top-p-mass-includes-self", "npgemma/generation/generate.py", "before = np.cumsum(probs, axis=-1) - probs", "before = np.cumsum(probs, axis=-1)", [SAMPLING]),
    ("temperature-multiplies", "npgemma/generation/generate.py", "x = logits.astype(np.float32) / np.float32(gen.temperature)", "x = logits.astype(np.float32) * np.float32(gen.temperature)", [SAMPLING]),
    ("sampling-ignores-filters", "npgemma/generation/generate.py", "probs = _softmax(filter_logits(logits, gen).astype(np.float64))", "probs = _softmax(logits.astype(np.float64))", [SAMPLING]),
    ("rows-share-one-stream", "npgemma/generation/generate.py", "return [np.random.default_rng([int(seed), i]) for i in range(batch)]", "return [np.random.default_rng(int(seed)) for i in range(batch)]", [SAMPLING, API]),
    ("finished-rows-not-held-at-eos", "npgemma/generation/generate.py", "token = np.where(done, cfg.eos_token_id, host)", "token = host", [SAMPLING]),
    # ---- npgemma/generation/processing.py
    ("resize-ignores-the-filter", "npgemma/generation/processing.py", "resize(size, resample=self.resample))", "resize(size, resample=Image.Resampling.BILINEAR))", [PROCESSING, ORACLE_PROC]),
    ("rescale-in-float32", "npgemma/generation/processing.py", "x = (resized.astype(np.float64) * self.rescale_factor).astype(np.float32)", "x = resized.astype(np.float32) * np.float32(self.rescale_factor)", [PROCESSING]),
    ("normalise-times-std", "npgemma/generation/processing.py", "x = (x - self.image_mean) / self.image_std", "x = (x - self.image_mean) * self.image_std", [PROCESSING]),
    ("normalise-wrong-order", "npgemma/generation/processing.py", "x = (x - self.image_mean) / self.image_std", "x = x / self.image_std - self.image_mean", [PROCESSING]),
    ("pixels-transposed", "npgemma/generation/processing.py", "x.transpose(2, 0, 1)", "x.transpose(2, 1, 0)", [PROCESSING]),
    ("prompt-no-newline", "npgemma/generation/processing.py", "text = self.image_token + self.bos_token + prompt + \"\\n\"", "text = self.image_token + self.bos_token + prompt", [PROCESSING]),
    ("bos-before-image", "npgemma/generation/processing.py", "text = self.image_token + self.bos_token + prompt + \"\\n\"", "text = self.bos_token + self.image_token + prompt + \"\\n\"", [PROCESSING]),
    ("batch-pads-right", "npgemma/generation/processing.py", "ids[b, length - len(r.input_ids):] = r.input_ids", "ids[b, :len(r.input_ids)] = r.input_ids", [PROCESSING]),
    ("attention-mask-pads-right", "npgemma/generation/processing.py", "mask[b, length - len(r.input_ids):] = 1", "mask[b, :len(r.input_ids)] = 1", [PROCESSING]),
]


def apply(text: str, old: str, new: str, where: str) -> str:
    """`text` with its one occurrence of `old` replaced; an error when there is not exactly one."""
    if "\n" in old or "\n" in new:
        raise SystemExit(f"{where}: a mutant is a one-line break")
    count = text.count(old)
    if count != 1:
        raise SystemExit(f"{where}: the original text occurs {count} times (expected once): {old!r}")
    return text.replace(old, new)


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """('pass' | 'fail' | 'timeout', the first failing test or error line, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=-ra -m 'not slow'", *tests]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no answer in {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if done.returncode == 0:
        return "pass", "", seconds
    out = done.stdout + done.stderr
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    return "fail", m.group(1) if m else (out.strip().splitlines() or ["(no output)"])[-1], seconds


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the mutants whose id contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy (default 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant (default 300)")
    ap.add_argument("--json", type=Path, default=RESULT, help=f"result file (default {RESULT.relative_to(ROOT)})")
    ap.add_argument("--no-json", action="store_true", help="write no result file")
    args = ap.parse_args(argv)

    ids = [m[0] for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("mutant ids must be unique")
    chosen = [m for m in MUTANTS if not args.only or args.only in m[0]]
    for mid, path, old, new, _ in chosen:  # every mutant applies to today's tree, or nothing runs
        apply((ROOT / path).read_text(), old, new, f"{mid} ({path})")
    if args.list:
        for mid, path, old, new, tests in chosen:
            print(f"{mid:40} {path}: {old!r} -> {new!r}  [{', '.join(tests)}]")
        return 0

    commit = git_commit()  # what was copied: the tree as it is now
    with tempfile.TemporaryDirectory(prefix="npgemma-mutation-") as tmp:
        trees = []
        for j in range(max(1, args.jobs)):  # one copy per worker: a mutant is alone in its tree
            tree = Path(tmp) / f"tree{j}"
            for part in ("npgemma", "tests", "parity"):
                shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
            trees.append(tree)
        every = sorted({t for m in chosen for t in m[4]})
        status, detail, seconds = run_tests(trees[0], every, args.timeout * 3)
        print(f"baseline (unmutated, {len(every)} test targets): {status} in {seconds:.0f} s {detail}")
        if status != "pass":
            print("the tests fail without a mutant: fix that first", file=sys.stderr)
            return 2
        free = queue.Queue()
        for tree in trees:
            free.put(tree)
        done = [0]
        lock = threading.Lock()

        def one(mutant):
            mid, path, old, new, tests = mutant
            tree = free.get()
            try:
                target = tree / path
                original = target.read_text()
                target.write_text(apply(original, old, new, mid))
                try:
                    status, detail, seconds = run_tests(tree, tests, args.timeout)
                finally:
                    target.write_text(original)
            finally:
                free.put(tree)
            caught = status != "pass"
            with lock:
                done[0] += 1
                print(f"{done[0]:3}/{len(chosen)} {'caught  ' if caught else 'SURVIVED'} {mid:38} "
                      f"{seconds:5.1f} s  {detail if caught else ' '.join(tests)}", flush=True)
            return {"id": mid, "file": path, "original": old, "mutant": new, "tests": tests,
                    "caught": caught, "by": detail if caught else None,
                    "outcome": status, "seconds": round(seconds, 1)}

        with ThreadPoolExecutor(len(trees)) as pool:
            rows = list(pool.map(one, chosen))

    caught = sum(r["caught"] for r in rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    survivors = [r["id"] for r in rows if not r["caught"]]
    if survivors:
        print("survivors (a property no named test checks): " + ", ".join(survivors))
    print(f"mutation score: {caught}/{len(rows)} ({date}, git commit {commit})")
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import record  # the machine, BLAS kernel and versions every result file carries

        where = {k: v for k, v in record.provenance("tests/mutation/run.py").items()
                 if k in ("machine", "blas", "versions", "environment")}
        args.json.write_text(json.dumps(where | {
            "score": f"{caught}/{len(rows)}", "caught": caught, "total": len(rows),
            "date": date, "commit": commit,
            "command": "python " + " ".join([str(Path(__file__).relative_to(ROOT)), *(argv or sys.argv[1:])]),
            "python": sys.version.split()[0], "survivors": survivors, "mutants": rows,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
