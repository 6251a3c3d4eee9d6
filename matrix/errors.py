"""Errors that llmcompat reports to its user (exit code 2), each naming where the bad input is."""

from __future__ import annotations


class LlmcompatError(Exception):
    """An error of the user's input or of llmcompat itself; never a cell's outcome."""

    exit_code = 2


class ConfigError(LlmcompatError):
    """Bad input: names the file, the line (when known), the field path and the offending value."""

    def __init__(self, file: str, field: str, value: object, message: str, line: int | None = None):
        self.file = str(file)
        self.field = field
        self.value = value
        self.message = message
        self.line = line
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {field}: {value!r}: {message}")
