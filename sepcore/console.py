"""A job's console: its own lines (``sep.*`` loggers) and progress bars, and little else.

Ray's internals go to the session's log folder (named in the job's last line): worker and
raylet output stays in Ray's log files (``log_to_driver=False``), Ray Data logs only to
its ``ray-data.log``, and the ``ray`` loggers print errors only (``ray_jobs.common.init_ray``
sets those). ``SEP_LOG_LEVEL=DEBUG`` brings all of it back to the console.
"""

from __future__ import annotations

import logging
import os
import warnings

#: Libraries whose DEBUG records carry request headers (the S3 access key id is in
#: ``Authorization``): never below INFO, whatever ``SEP_LOG_LEVEL`` says.
QUIET_LOGGERS = ("botocore", "boto3", "aiobotocore", "s3transfer", "urllib3")
#: Ray's Python loggers on the driver: WARNING (``ray`` itself: ERROR; ``ray.data``: its log
#: file only) unless ``SEP_LOG_LEVEL=DEBUG``.
RAY_LOGGERS = ("ray.train", "ray.tune", "ray.util", "ray.air")
#: Modules whose deprecation warnings stay off the console (a regular expression).
LIBRARIES = r"(ray|torch|pyarrow|pandas|lightgbm|sklearn|librosa|music21|pydantic|google|pkg_resources)(\..*)?$"


def verbose() -> bool:
    """Whether Ray's own output should reach the console (``SEP_LOG_LEVEL=DEBUG``)."""
    return os.environ.get("SEP_LOG_LEVEL", "INFO").upper() == "DEBUG"


def setup_logging() -> None:
    """The job's log lines on stderr; libraries' deprecation warnings off the console."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("SEP_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
    if not verbose():
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        quiet_warnings()


def quiet_warnings() -> None:
    """Deprecations inside libraries, which this project cannot fix (its own calls are fixed).

    Called again once Ray is imported: ``ray.util.annotations`` puts its own filter first.
    """
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
