"""Where a genuine bug's traceback goes, so that the user sees one line and a developer still gets the whole story.

The folder is `$COMPRESSION_STUDIO_LOGS`, else `$XDG_STATE_HOME/compression-studio/logs`, else
`~/.local/state/compression-studio/logs`; one file per crash, named by time and process id.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from pathlib import Path


def log_folder() -> Path:
    explicit = os.environ.get("COMPRESSION_STUDIO_LOGS")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "compression-studio" / "logs"


def write_crash_log(exc: BaseException, context: str) -> Path | None:
    """Write `exc`'s traceback with `context` (what was running: a command line, a job's name); the file's
    path, or None when no log could be written (the caller then prints the traceback instead)."""
    folder = log_folder()
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = (f"{context}\n"
            f"python {platform.python_version()} on {platform.platform()}; argv {sys.argv}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        return None
    return path
