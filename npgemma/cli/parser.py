"""The `npgemma` command line's parser: every command, every option, its help and its default.

Only argparse and args.py: building it (and so `npgemma --help`) imports no NumPy, no torch and
no model code; main.py imports a command's module once that command is chosen.
"""

from __future__ import annotations

import argparse

from .. import __version__
from .args import (ListTraps, Parser, add_backend_args, add_model_args, add_timeout_arg,
                   add_window_arg, non_negative_int)

PROMPTS = """\
prompts (PaliGemma's task prefixes; "en" is the answer's language):
  caption en                 a caption
  answer en what is this?    an answer to a question
  detect star ; circle       boxes: <loc> tokens, drawn with --draw
  segment star               a box and a mask: <seg> tokens, masks with --vae
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="npgemma", description="PaliGemma in readable NumPy (and PyTorch).",
                    epilog="`npgemma COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"npgemma {__version__}",
                        help="print npgemma's version and exit")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                parser_class=Parser)
    _generate(sub)
    _demo(sub)
    _inspect(sub)
    _parity(sub)
    _conform(sub)
    _models(sub)
    _tiny_checkpoint(sub)
    return parser


def _command(sub, name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog=epilog)


def _generate(sub) -> None:
    g = _command(sub, "generate", "caption / answer / detect / segment: the model's answer about "
                                  "an image (or a batch of them)", epilog=PROMPTS)
    add_model_args(g, several=True)
    g.add_argument("--max-new-tokens", type=non_negative_int, default=32, metavar="N",
                   help="stop after N new tokens (or earlier, at the end-of-sequence token)")
    g.add_argument("--do-sample", action="store_true",
                   help="draw each next token from the model's distribution, shaped by the four "
                        "options below (default: greedy, the most likely token every step)")
    g.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="with --do-sample: divide the logits by T before sampling (default: 1.0)")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="with --do-sample: sample among the K most likely tokens only "
                        "(default: all)")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="with --do-sample: sample among the fewest most likely tokens whose "
                        "probabilities add up to P, nucleus sampling (default: 1.0, off)")
    g.add_argument("--seed", type=non_negative_int, default=None, metavar="N",
                   help="with --do-sample: seed the draws, for a repeatable sample (default: a "
                        "different draw every run)")
    g.add_argument("--draw", metavar="OUT.png",
                   help="save the image with the detected boxes (<loc> answers) and masks "
                        "(<seg> answers, with --vae) drawn on it")
    g.add_argument("--vae", metavar="PATH",
                   help="PaliGemma's mask VQ-VAE (vae-oid.npz): <seg> codes -> masks "
                        "(default: the bundled model's own, when --model is not given)")


def _demo(sub) -> None:
    d = _command(sub, "demo", "the bundled demo model on a freshly drawn scene: its answers to "
                              "five questions beside the truth, and a picture")
    d.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="which scene to draw")
    d.add_argument("--out", default="demo.png", metavar="OUT.png",
                   help="picture of the scene with the predicted boxes and masks")
    add_backend_args(d)
    d.add_argument("--model", default=None, metavar="DIR",
                   help="a retrained demo model's folder (default: the bundled one)")


def _inspect(sub) -> None:
    p = _command(sub, "inspect", "trace one answer: attention over the image, rollout, logit "
                                 "lens, as one offline HTML report")
    add_model_args(p)
    p.add_argument("--out", default="report.html", metavar="OUT.html",
                   help="the HTML report to write")
    p.add_argument("--png", metavar="DIR", help="also write plain PNG pictures into DIR")
    p.add_argument("--npz", metavar="PATH", help="also save the raw trace (PATH.npz + PATH.json)")
    p.add_argument("--names", action="append", default=[], metavar="GLOB",
                   help="extra hook names kept for --npz (e.g. 'decoder.blocks.*.attn.hook_q'; "
                        "repeatable)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=16, metavar="N",
                   help="new tokens traced")
    p.add_argument("--occlusion", type=non_negative_int, default=4, metavar="N",
                   help="occlusion map over an N x N grid of image cells (N*N extra prefills; "
                        "0: off)")


def _against_options(p, what: str) -> None:
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                   help="attention implementation of --against transformers")
    p.add_argument("--python", metavar="PATH",
                   help=f"with --against {what}: run the adapter in this interpreter (the "
                        "peer's own virtual environment; default: this Python)")


def _parity(sub) -> None:
    p = _command(sub, "parity", "compare numpy with torch (or --against another implementation) "
                                "on one input, stage by stage")
    add_model_args(p, backend=False)  # numpy float32 against torch (or --against SPEC)
    p.add_argument("--max-new-tokens", type=non_negative_int, default=8, metavar="N",
                   help="greedy tokens compared between the two sides")
    p.add_argument("--against", metavar="SPEC",
                   help="the other side: PKG.MODULE:FUNC, FILE.py:FUNC, torch, transformers, "
                        "openai:URL, keras-hub or mlx-vlm (default: npgemma's own torch backend, "
                        "layer by layer)")
    p.add_argument("--diagnose", action="store_true",
                   help="with --against: rank the known deviations by how well each explains "
                        "the difference")
    _against_options(p, "FILE.py:FUNC (or keras-hub, mlx-vlm)")
    add_timeout_arg(p)
    p.add_argument("--list-traps", action=ListTraps,
                   help="list the trap catalogue --diagnose searches, and exit")


def _conform(sub) -> None:
    p = _command(sub, "conform", "check another PaliGemma implementation over npgemma's whole "
                                 "case set: one table, a diagnosis per failure")
    p.description += (" Runs the implementation on every case and diagnoses each failing one "
                      "(the diagnosis always runs: there is no --diagnose to give); a crash is "
                      "sorted by cause with sibling cases run on demand.")
    p.add_argument("--against", metavar="SPEC",
                   help="PKG.MODULE:FUNC, FILE.py:FUNC, torch, transformers, openai:URL, "
                        "keras-hub or mlx-vlm (required unless --list)")
    _against_options(p, "SPEC")
    p.add_argument("--cases", metavar="GLOB[,GLOB]",
                   help="only these cases, e.g. 'pg2-*' or 'model:*' (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and what each catches")
    p.add_argument("--list-traps", action="store_true",
                   help="list the trap catalogue the diagnosis searches (with --markdown FILE: "
                        "also as a markdown table)")
    p.add_argument("--list-adapters", action="store_true",
                   help="list the built-in adapters, where each runs and its setup script")
    add_timeout_arg(p)
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="add a checkpoint of yours as a case, named model:DIR (repeatable)")
    p.add_argument("--workdir", metavar="DIR",
                   help="where the case checkpoints are written (kept, reused; default: a "
                        "temporary folder)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=6, metavar="N",
                   help="greedy tokens compared per case")
    add_backend_args(p, backend=False)
    add_window_arg(p)  # which authority npgemma's side runs for Gemma-2's window
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _models(sub) -> None:
    m = _command(sub, "models", "the PaliGemma checkpoints in the Hugging Face cache (and "
                                "folders given): sizes, and the RAM each backend needs")
    m.add_argument("folders", nargs="*", metavar="MODEL",
                   help="checkpoint folders or model ids to list too")
    m.add_argument("--json", action="store_true", help="print one JSON object")


def _tiny_checkpoint(sub) -> None:
    t = _command(sub, "tiny-checkpoint", "write a tiny random PaliGemma checkpoint (Hugging Face "
                                         "layout, under 1 MB) and an example image, to try "
                                         "--model, parity and conform without downloading one",
                 epilog="then, for example:\n"
                        "  npgemma generate --model DIR --image DIR/example.png --prompt 'caption en'\n"
                        "  npgemma parity --model DIR --image DIR/example.png --prompt 'caption en'\n"
                        "  npgemma conform --model DIR --cases 'model:*' --against torch")
    t.add_argument("dir", metavar="DIR", help="the folder to write (new, or empty)")
    t.add_argument("--gemma", type=int, default=1, choices=[1, 2],
                   help="1: PaliGemma (a Gemma decoder); 2: PaliGemma 2 (a Gemma 2 decoder)")
    t.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="seed of the random weights")
