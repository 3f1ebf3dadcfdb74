"""Ray entrypoints: one thin module per job (``python -m ray_jobs.<job>``).

Each module declares a :class:`ray_jobs.common.Job` and exposes ``main(argv=None)``;
``sep <job>`` (``ray_jobs.cli``) dispatches to the same ``main``.
"""
