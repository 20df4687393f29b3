"""Which code wrote a file: the one ``code_version()`` stamped into datasets and reports.

A core module (standard library only): the simulator imports it too.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from speckle_embed import __version__

__all__ = ["code_version"]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``"speckle_embed <version>"`` plus ``" git <commit>[-dirty]"`` when run from a git checkout.

    ``<commit>`` is the 12-hex short hash of ``HEAD``; ``-dirty`` (as ``git describe --dirty``)
    marks uncommitted changes to tracked files. Without git, or outside a checkout, the git
    part is left out. Computed once per process.

    Examples
    --------
    >>> code_version().startswith("speckle_embed ")
    True
    """
    text = f"speckle_embed {__version__}"
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, timeout
        return text
    return f"{text} git {commit}{'-dirty' if dirty else ''}" if commit else text
