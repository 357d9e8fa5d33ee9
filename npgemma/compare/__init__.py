"""Comparing another PaliGemma implementation with npgemma's NumPy reference
(`npgemma parity --against`, `npgemma conform`).

request.py (what a comparison is asked: `Request`), adapters/ (every built-in adapter, one
registry, the peers' setup scripts), contract.py (what an adapter returns, calls under a
timeout), remote.py (an adapter in another interpreter), reference.py (npgemma's side),
against.py (one input or batch, stage by stage), conform.py (the case set and its table);
the diagnosis: catalogue.py (the one trap catalogue) over deviations.py + replacements.py +
swap.py (math, config and decode-time traps swapped into the reference), pixels.py
(preprocessing), batch.py (batch traps) + batch_pads.py (a padded row's traps), crashes.py
(load and crash causes, sorted by sibling cases); diagnose.py ranks the candidates; verdict.py
(`Verdict`, typed).
"""
