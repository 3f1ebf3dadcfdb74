"""The library side of ``sep demo``: its presets and its report, without running any job."""
