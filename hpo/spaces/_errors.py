"""Errors of the search-space language: each issue names the file, the key path and the line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpaceIssue:
    """One problem found in a search-space file."""

    file: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = self.path or "<top level>"
        return f"{where}: {key}: {self.message}"


class SpaceError(ValueError):
    """A search-space file is invalid. ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[SpaceIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))
        super().__init__("\n".join(str(i) for i in self.issues))
