"""Retrying study-store calls across dropped connections and database restarts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("hpo.retry")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a dropped connection or a database restart (worth retrying)."""
    # Connection-level failures only: a constraint violation or a bug must surface at once.
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def with_db_retry(
    fn: Callable[[], T],
    *,
    attempts: int = 12,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
    what: str = "study store call",
) -> T:
    """Call ``fn``; on a transient database error wait (exponential backoff) and call again.

    With the defaults a call survives about a minute of database downtime.

    Example:
        >>> with_db_retry(lambda: 42)
        42
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0][:200],
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
            delay = min(max_delay, delay * 2)
    raise AssertionError("unreachable")
