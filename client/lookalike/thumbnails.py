"""Thumbnails for ``lookalike search --html``, read only from under a root the user gives.

A hit key is a string any client of the server may have stored (issue 10: a key such as
``../../../../etc/hostname`` made the CLI embed that file in a page its user may share), so
a key is never trusted as a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["MAX_THUMBNAIL_FILE_BYTES", "load_thumbnails"]

MAX_THUMBNAIL_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are not read (a thumbnail needs no more; a huge file is not a photo)."""


def load_thumbnails(keys: Sequence[str], root: Path | None) -> dict[str, bytes | None]:
    """Reads the thumbnail of each hit key, only from regular files under ``root``.

    A key is a string any client of the server may have stored, so it is never trusted as
    a path: it is joined to ``root``, resolved (``..`` and every symlink followed), and read
    only when the result still lies under the resolved root and is a regular file of sane
    size. ``root=None`` reads nothing.

    Args:
        keys: Hit keys (duplicates are read once).
        root: The directory thumbnails may come from, or ``None``.

    Returns:
        Key -> file bytes, or ``None`` where there is no safe local file.

    Raises:
        ValueError: ``root`` does not exist or is not a directory.
    """
    thumbs: dict[str, bytes | None] = dict.fromkeys(keys)
    if root is None:
        return thumbs
    try:
        base = root.resolve(strict=True)
    except OSError as exc:
        raise ValueError(f"--thumbs-root {root}: {exc.strerror or exc}") from exc
    if not base.is_dir():
        raise ValueError(f"--thumbs-root {root}: not a directory")
    for key in thumbs:
        try:
            path = (base / key).resolve(strict=True)  # an absolute key replaces base: checked below
            if not path.is_relative_to(base) or not path.is_file():
                continue
            if path.stat().st_size > MAX_THUMBNAIL_FILE_BYTES:
                continue
            thumbs[key] = path.read_bytes()
        except (OSError, ValueError, RuntimeError):  # missing, unreadable, NUL in key, symlink loop
            continue
    return thumbs
