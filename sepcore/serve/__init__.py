"""The web demonstrator's plain parts (``sep serve``): configuration, job store, pages, HTTP app.

Ray Serve wires them in :mod:`ray_jobs.serve`; nothing here imports Ray.
"""
