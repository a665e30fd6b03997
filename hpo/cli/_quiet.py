"""Keep TensorFlow's native start-up notices off the terminal of short commands.

TensorFlow's C++ side writes "All log messages before absl::InitializeLog() ...", oneDNN and
CPU-feature notices straight to file descriptor 2 whatever ``TF_CPP_MIN_LOG_LEVEL`` says. For
the commands that load models and print results (``hpo predict``, ``export``, ``ensemble``,
``generate``, ``sample``), descriptor 2 goes through a pipe that drops those informational lines
(glog lines starting ``I`` or ``W`` and absl's notice) and passes everything else on; Python's
own ``sys.stderr`` writes to the terminal directly. Commands that start long-lived child
processes (``hpo run``, ``worker``, ``ui``) are left alone, children would inherit the pipe;
``hpo run`` filters only while it checks the space (its workers log to their own files).
``HPO_NATIVE_STDERR=1`` turns the filter off.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# glog's informational and warning lines ("I0000 00:00:1796... port.cc:153] ..."), absl's
# pre-initialisation notice and the CPU-feature notice's continuation line.
NOISE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions: .*rebuild TensorFlow)"
)


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Filter descriptor 2 while the block runs (see the module docs)."""
    if os.environ.get("HPO_NATIVE_STDERR") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        yield
        return
    python_stderr = sys.stderr
    if _writes_to_descriptor_2(python_stderr):
        terminal_file = io.FileIO(os.dup(terminal), "w")
        sys.stderr = io.TextIOWrapper(
            terminal_file, encoding="utf-8", errors="replace", line_buffering=True
        )
    # else Python's stderr is already elsewhere (captured by a caller): left as it is.
    pump = threading.Thread(target=_pump, args=(read_end, terminal), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump reads to its end
        pump.join(timeout=2)
        os.close(terminal)


def _writes_to_descriptor_2(stream: object) -> bool:
    try:
        return bool(stream.fileno() == 2)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def _pump(read_end: int, terminal: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if not NOISE.match(line.decode("utf-8", "replace")):
                try:
                    os.write(terminal, line)
                except OSError:
                    return
