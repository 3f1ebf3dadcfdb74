"""Instrument presence on 1-second snippets: labels, features, LightGBM, pooled activations."""
