"""One local Ray for the whole test run, and a way to run a block on a Ray of its own.

Ray costs seconds to start, so the job tests share one local Ray (2 CPUs, no
dashboard) that stays up for the whole run (``local_ray`` in tests/conftest.py). A test
that needs a Ray started in another environment (Ray's workers read ``SEP_FAULTS`` or
the S3 settings when they start) runs inside :func:`own_ray`, which stops the shared
one, starts its own, and afterwards brings the shared one back if it was running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

CPUS = 2


def start_shared() -> None:
    """Start the shared local Ray unless a Ray is running already."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=CPUS, include_dashboard=False)


@contextlib.contextmanager
def own_ray(**env: str) -> Iterator[None]:
    """Run the block on a fresh local Ray started with ``env`` set (then unset again)."""
    import ray

    shared = ray.is_initialized()
    saved = {key: os.environ.get(key) for key in env}
    ray.shutdown()
    os.environ.update(env)
    try:
        ray.init(num_cpus=CPUS, include_dashboard=False)
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if shared:
            start_shared()
