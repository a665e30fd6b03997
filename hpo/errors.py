"""The errors of hpo: every one is an :class:`HpoError` carrying the CLI's exit status.

:class:`UsageError` (exit status 2) is a request that cannot be met as given: an invalid space
file, option, name, dataset or model; nothing was run. Any other :class:`HpoError` (exit status
1) is a failure while running: a store or tracking server that does not answer, a trial that
failed. The CLI turns them into one error line and that status in one place
(``hpo.cli._common.handled_errors``); from Python, catch :class:`HpoError`.

The classes keep the modules and names they always had (``hpo.spaces.SpaceError``,
``hpo.storage.studies.StudyError``...) and their built-in bases (``ValueError``,
``RuntimeError``...),
so code that caught those still does.

Example:
    >>> from hpo.spaces import SpaceError, parse_spec
    >>> try:
    ...     parse_spec("family: image_cnn\\n", "s.yaml")
    ... except HpoError as exc:
    ...     print(type(exc).__name__, exc.exit_code, isinstance(exc, ValueError))
    SpaceError 2 True
"""

from __future__ import annotations

__all__ = ["HpoError", "UsageError"]


class HpoError(Exception):
    """Base of every hpo error; ``exit_code`` is the CLI's exit status for it (1: runtime)."""

    exit_code: int = 1


class UsageError(HpoError):
    """A request that cannot be met as given (invalid input, option or name): exit status 2."""

    exit_code = 2
