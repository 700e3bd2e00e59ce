"""The output directory: checked before anything is measured, written all at once.

A run measures for minutes; a directory it cannot write to must be found at the start.
Its files are written into a staging directory inside the output directory and then
renamed into place, so a run that fails (or is stopped) never leaves half its output,
and the previous run's files stay as they were until the new ones are complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["RESULT_FILES", "OutputError", "check_out_dir", "publish"]

RESULT_FILES = ("results.json", "results.md")
_PLOTS = "latency_*.png"


class OutputError(Exception):
    """The output directory cannot be used; the message names it and says why."""


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_out_dir(out: Path) -> None:
    """Create ``out`` if needed and check that the results can be written there.

    Raises:
        OutputError: ``out`` is not a directory, cannot be created or written, or one of
            the result files is there but is not a file.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot be created ({_why(exc)})") from None
    for name in RESULT_FILES:
        path = out / name
        if path.exists() and not path.is_file():
            raise OutputError(f"--out {out}: {name} exists and is not a file")
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot be written to ({_why(exc)})") from None


def publish(out: Path, write: Callable[[Path], None]) -> list[str]:
    """Let ``write`` fill a staging directory, then move its files into ``out``.

    Plots of an earlier run that this one did not write again are removed once the new
    files are in place. Returns the names of the files written.
    """
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".results-"))
    try:
        write(staging)
        written = sorted(p.name for p in staging.iterdir())
        # The results files last: once results.json is new, everything it names is too.
        order = sorted(written, key=lambda name: (name == "results.json", name in RESULT_FILES))
        for name in order:
            os.replace(staging / name, out / name)
        for stale in out.glob(_PLOTS):
            if stale.name not in written:
                stale.unlink(missing_ok=True)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
