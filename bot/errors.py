"""The exception tree. Only the edges (CLI, sockets, HTTP) turn these into
exit codes, close codes or statuses."""

from __future__ import annotations


class DeskmateError(Exception):
    """Base of every error deskmate raises on purpose."""


class ConfigError(DeskmateError):
    """A setting is missing or has a bad value."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class StoreError(DeskmateError):
    """Redis could not complete an operation (down, timeout, script error)."""


class ProjectError(DeskmateError):
    """A bot project on disk is missing files or has invalid content."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.message = message
        self.line = line


class FrameError(DeskmateError):
    """A client frame is malformed; ``code`` goes out in the ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
