"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


class GymError(Exception):
    """Base of every error that is the user's to fix; ``problems`` are printed one per line."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class ConfigError(GymError):
    """The config file, an override or a combination of keys is wrong."""


class PluginError(GymError):
    """A plugin failed to load, or two plugins clash."""


class DataError(GymError):
    """A dataset could not be read or turned into samples (names the file, row and field)."""


class ModelError(GymError):
    """The model or tokenizer could not be loaded."""


class LostProcessError(GymError):
    """In a run of several processes, a collective failed because another process died: that process's own
    failure is the cause (the launcher reports it); this exit status lets the launcher tell the two apart."""

    exit_code = 75
