"""Evaluation without Ray: BSS Eval with oracle bounds, activation matrices, metrics.json.

``config`` (sections), ``bss`` (BSS Eval backends), ``scoring`` (pooled and windowed
scores, medians), ``activations`` (seed 001's matrices), ``tracks`` (one track's
evaluation), ``selection`` (which tracks), ``document`` (metrics.json), ``report``.
"""
