"""BSS Eval scores with oracle bounds, activation matrices, the metrics.json document."""
