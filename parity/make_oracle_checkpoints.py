"""Write the oracle tier's tiny PaliGemma checkpoints (and, with --report, measure them).

    python -m parity.make_oracle_checkpoints OUT_DIR [--cases ID ...] [--report]

One folder per case of `parity/oracle_cases.py`, each with config.json, the safetensors
(single file, or shards + model.safetensors.index.json), the tiny tokenizer and a hub-style
preprocessor_config.json. Re-running overwrites the folders with identical files.

How the weights get onto disk:
* "v5-save" / "v5" layouts: transformers 5.24 itself — a `PaliGemmaForConditionalGeneration`
  built from the config dict, re-initialised from the case's seed (`oracle_cases.init_weights`),
  cast with `.to(torch.bfloat16)` for bf16 cases, then `save_pretrained` (default, or
  `save_original_format=False` for "v5"; `max_shard_size` small enough for >= 2 shards).
* "hub" / "v4.52" layouts, which 5.24 cannot write: `npgemma.synthetic.checkpoint.write_checkpoint`
  writes the files (names, shards, index, header metadata); then every tensor's *values* are
  replaced, in place and under the same names, by the same seeded transformers-initialised model
  (write_checkpoint's own small init makes greedy output one repeated token). `source_state`
  returns that model's tensors so the tests can check transformers loaded each one where it
  belongs.
* minimal_config: the model is built from a hub-style minimal config dict; after saving,
  config.json is replaced by that minimal dict (the full one transformers wrote is kept as
  config.saved.json for comparison).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

try:
    from parity import oracle_cases as oc
except ImportError:  # run by pytest with parity/ on sys.path
    import oracle_cases as oc

SHARD_SIZE = "100KB"  # the tiny embedding alone is ~230 KB fp32 / ~115 KB bf16: >= 2 shards


def build_model(case: oc.Case):
    """The seeded transformers model of `case`, in the on-disk dtype."""
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    raw = oc.minimal_config_dict(case) if case.minimal_config else oc.config_dict(case)
    torch.manual_seed(case.seed)  # construction draws too; init_weights re-draws every parameter
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.from_dict(raw))
    oc.init_weights(model, case.seed, case.gain)
    return model.to(getattr(torch, case.dtype)).eval()


def source_state(case: oc.Case) -> dict:
    """{transformers in-memory name: tensor} of the weights written for `case`."""
    return dict(build_model(case).named_parameters())


def write_case(case: oc.Case, folder) -> Path:
    """Write one case's checkpoint folder (replacing whatever was there)."""
    from npgemma.synthetic.tokenizer import write_tokenizer

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = build_model(case)
    if case.writer == "transformers":
        kwargs = {"max_shard_size": SHARD_SIZE} if case.sharded else {}
        model.save_pretrained(folder, save_original_format=case.layout == "v5-save", **kwargs)
    else:
        _write_with_npgemma(case, folder, model)
    write_tokenizer(folder)
    if case.minimal_config:
        (folder / "config.json").rename(folder / "config.saved.json")
        _write_json(folder / "config.json", oc.minimal_config_dict(case))
    _write_json(folder / "preprocessor_config.json", oc.preprocessor_config(case))
    return folder


def _write_with_npgemma(case: oc.Case, folder: Path, model) -> None:
    """write_checkpoint's files, with the values of `model` under the same on-disk names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from npgemma.checkpoint.weights import LAYOUTS, disk_name
    from npgemma.synthetic.checkpoint import write_checkpoint

    write_checkpoint(folder, oc.config_dict(case), layout=case.layout, dtype=case.dtype,
                     num_shards=3 if case.sharded else 1, seed=case.seed, tokenizer=False)
    state = dict(model.named_parameters())
    prefixes = dict(zip(LAYOUTS[case.layout], ("vision_tower.", "multi_modal_projector.",
                                               "language_model.", "lm_head.")))
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys, meta = list(f.keys()), f.metadata()
        tensors = {}
        for key in keys:
            prefix = next(p for p in prefixes if key.startswith(p))
            canonical = prefixes[prefix] + key[len(prefix):]
            tensors[key] = state[disk_name(canonical, "v5")].detach().contiguous()
        save_file(tensors, str(path), metadata=meta)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_all(root, cases=oc.CASES) -> dict[str, Path]:
    return {case.id: write_case(case, Path(root) / case.id) for case in cases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write one checkpoint folder per case into")
    ap.add_argument("--cases", nargs="*", choices=list(oc.CASE_BY_ID), help="default: all")
    ap.add_argument("--report", action="store_true",
                    help="also run npgemma (numpy, torch) against transformers on each case and "
                         "print the max abs differences")
    args = ap.parse_args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # tiny models: faster, and no spinning OpenMP workers
    cases = [oc.CASE_BY_ID[c] for c in args.cases] if args.cases else list(oc.CASES)
    folders = write_all(args.out, cases)
    for cid, folder in folders.items():
        print(f"{cid}: {folder}")
    if args.report:
        t0 = time.perf_counter()
        rows = [r for case in cases for r in oc.case_rows(case, folders[case.id])]
        print()
        print(oc.format_table(rows))
        print(f"\n(max abs differences vs transformers {transformers.__version__}, "
              f"{time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
