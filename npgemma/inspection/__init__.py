"""Seeing what the model computes: named activations and the offline report.

    capture.py    Capture: which hook points to keep (glob, layer, head), pieces per step
    trace.py      Trace and trace(): one greedy answer with its activations, stitched
    analysis.py   attention to the image, rollout, logit lens, occlusion
    report.py     the self-contained HTML report and plain PNGs (report_js.py: its script)

The hook points themselves are `npgemma/hooks.py`: the model math offers them.
"""
