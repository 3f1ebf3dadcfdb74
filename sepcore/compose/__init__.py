"""The LSTM chord and melody composer (seed 003): grid representation, data, sampling, measures.

Torch lives in :mod:`sepcore.models.composer`; the Ray layers are ``ray_jobs.train`` (with
``model.name: composer``) and ``ray_jobs.compose``. See docs/compose.md.
"""
