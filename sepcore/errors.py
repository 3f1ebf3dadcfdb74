"""Exception types of the library.

Every error names the file (URI) and the problem. Library code raises these; only the
CLI (``ray_jobs``) turns them into messages and exit codes.
"""

from __future__ import annotations


class SepError(Exception):
    """Base class of every error the library raises on purpose."""


class StorageError(SepError):
    """A storage operation failed (missing object, permission, network)."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class AudioError(SepError):
    """An audio file cannot be decoded or encoded."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class MetadataError(SepError):
    """A metadata file (for example Slakh's ``metadata.yaml``) is missing or malformed."""

    def __init__(self, uri: str, field: str | None, problem: str):
        self.uri = uri
        self.field = field
        self.problem = problem
        where = f" (field '{field}')" if field else ""
        super().__init__(f"{uri}{where}: {problem}")


class RenderError(SepError):
    """A MIDI file could not be rendered to audio."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class ConfigError(SepError):
    """A job configuration is invalid; ``key`` is the dotted name of the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")
