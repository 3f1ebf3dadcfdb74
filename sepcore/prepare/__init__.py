"""Per-track preparation: stem QA, silence, mixing, features, and the rows of a prepared dataset."""
