"""Files at rest are private: the data directory 0700, what is in it 0600.

The process umask (0o077, set by ``lookalike-server`` at start) makes every
file the server and its embedded stores create private; :func:`private_dir`
also fixes a data directory an older version or another tool left open.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def private_dir(path: str | Path) -> Path:
    """Creates ``path`` as 0700 (parents too) and removes group/other access under it.

    Returns:
        The directory.
    """
    root = Path(path)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    opened = 0
    for entry in [root, *root.rglob("*")]:
        try:
            st = entry.lstat()
        except OSError:
            continue  # removed meanwhile
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
            continue
        os.chmod(entry, stat.S_IMODE(st.st_mode) & 0o700)
        opened += 1
    if opened:
        log.warning("data directory %s: removed group/other access from %d path(s)", root, opened)
    return root
