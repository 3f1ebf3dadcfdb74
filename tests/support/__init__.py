"""Helpers for tests, benchmarks and local runs; no pytest in here.

* :mod:`tests.support.midi`: small MIDI files built in code.
* :mod:`tests.support.s3`: a real S3 server on loopback (moto's server mode) and the
  environment that points :mod:`sepcore.io.storage` at it.

Submodules import their test-only dependencies (``moto``, ``boto3``) when used, so
importing this package costs nothing.
"""
