#!/usr/bin/env python3
"""Fetch real photos that are reachable offline from Debian packages, without installing them.

Only the package archive is downloaded (``apt-get download``, no root needed beyond a readable
apt cache) and unpacked with ``dpkg -x`` into a cache directory; nothing is installed system-wide.

Sets:

``tuxpaint``
    ``tuxpaint-stamps-default`` (GPL-2+, see ``usr/share/doc/tuxpaint-stamps-default/copyright``
    in the package) holds ~800 PNG stamps under ``usr/share/tuxpaint/stamps/<category>/<sub>/…``.
    Many are drawings (an ``.svg`` sibling, a ``cartoon`` folder, ``colorable``/``tintable`` in
    the ``.dat`` file, or the ``symbols`` tree); the rest are photo cut-outs with an alpha channel.
    We keep the photo cut-outs (also requiring > 3000 distinct opaque colours, which drops the
    flat-coloured drawings that slipped through), label each by its first two path components
    (``animals/birds`` → ``animals_birds``), keep labels with at least ``--min-per-label`` images,
    composite onto white and write ``OUT/<label>/<name>.png``.

``drawings``
    The *other* stamps of the same package, labelled the same way: the drawings and
    flat-coloured cut-outs that ``tuxpaint`` leaves out (the ``symbols`` tree aside), one per
    name (``frog-1.png`` and ``frog-2.png`` count once). No image is in both sets, so it
    serves to choose a setting that ``tuxpaint`` then measures (``benchmarks/fit_modes.py``).

``mate``
    ``mate-backgrounds``: JPEG/PNG landscape wallpapers, copied as-is to ``OUT/mate/``.

``testset``
    The eight small photos committed under ``tests/data/photos`` (see ``SOURCES.md`` there).

Usage::

    python scripts/get_photos.py tuxpaint --out data/tuxpaint
    python scripts/get_photos.py drawings --out data/tuxdrawings
    python scripts/get_photos.py mate --out data/mate
    python scripts/get_photos.py testset
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

DEFAULT_CACHE = Path(".cache/photos")
STAMPS_DIR = Path("usr/share/tuxpaint/stamps")


def fetch_package(package: str, cache: Path) -> Path:
    """Downloads and unpacks a Debian package into ``cache/<package>``; reuses a previous unpack.

    Args:
        package: Debian package name.
        cache: Cache directory.

    Returns:
        The directory the package was unpacked into (its filesystem root).

    Raises:
        RuntimeError: apt could not download the package.
    """
    root = cache / package
    if (root / ".complete").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        cmd = ["apt-get", "download", package]
        print(f"$ {' '.join(cmd)}  (in {cache})", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
        if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # A fresh machine often has empty package lists: refresh once and retry.
            print("$ apt-get update -qq", file=sys.stderr)
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            proc = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
        if proc.returncode != 0:
            # A fresh container often has empty package lists; `apt-get update` fixes that.
            raise RuntimeError(
                f"apt-get download {package} failed ({proc.stderr.strip()[-300:]}); try `apt-get update` first"
            )
        debs = sorted(cache.glob(f"{package}_*.deb"))
    if root.exists():
        shutil.rmtree(root)
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    (root / ".complete").write_text(debs[-1].name + "\n")
    return root


def _dat_flags(png: Path) -> str:
    # Variants like frog-1.png share frog.dat; a missing .dat means no flags.
    for dat in (png.with_suffix(".dat"), png.with_name(re.sub(r"-\d+$", "", png.stem) + ".dat")):
        if dat.exists():
            return dat.read_text(errors="replace")
    return ""


def tuxpaint_photos(stamps: Path, min_colours: int = 3000) -> list[tuple[str, Path]]:
    """Lists the photo cut-outs among the tuxpaint stamps, with their labels.

    Args:
        stamps: The unpacked ``usr/share/tuxpaint/stamps`` directory.
        min_colours: Distinct opaque colours below which a stamp counts as a drawing.

    Returns:
        ``(label, path)`` pairs, sorted by path.
    """
    import numpy as np
    from PIL import Image

    found: list[tuple[str, Path]] = []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps)
        if rel.parts[0] == "symbols" or "cartoon" in rel.parts or png.with_suffix(".svg").exists():
            continue
        flags = _dat_flags(png)
        if "colorable" in flags or "tintable" in flags:
            continue
        with Image.open(png) as im:
            rgba = np.asarray(im.convert("RGBA"))
        opaque = rgba[..., 3] > 200
        if not opaque.any():
            continue
        packed = rgba[opaque][:, :3].astype(np.uint32) @ np.array([1, 256, 65536], dtype=np.uint32)
        if len(np.unique(packed)) <= min_colours:
            continue
        label = "_".join(rel.parts[:-1][:2])
        found.append((label, png))
    return found


def tuxpaint_drawings(stamps: Path) -> list[tuple[str, Path]]:
    """Lists the stamps :func:`tuxpaint_photos` leaves out (``symbols`` aside), one per name.

    Args:
        stamps: The unpacked ``usr/share/tuxpaint/stamps`` directory.

    Returns:
        ``(label, path)`` pairs, sorted by path; numbered variants of one stamp
        (``frog-1``, ``frog_2``) keep only the first.
    """
    photos = {p for _, p in tuxpaint_photos(stamps)}
    seen: set[tuple[Path, str]] = set()
    found: list[tuple[str, Path]] = []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps)
        if png in photos or rel.parts[0] == "symbols":
            continue
        stem = (png.parent, re.sub(r"[-_]\d+$", "", png.stem))
        if stem in seen:
            continue
        seen.add(stem)
        found.append(("_".join(rel.parts[:-1][:2]), png))
    return found


def write_on_white(src: Path, dst: Path, max_side: int | None) -> None:
    """Composites a (possibly transparent) image onto white and saves it as PNG."""
    from PIL import Image

    with Image.open(src) as im:
        rgba = im.convert("RGBA")
    if max_side and max(rgba.size) > max_side:
        rgba.thumbnail((max_side, max_side))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.alpha_composite(white, rgba).convert("RGB").save(dst, format="PNG", optimize=True)


def cmd_tuxpaint(args: argparse.Namespace) -> int:
    root = fetch_package("tuxpaint-stamps-default", args.cache)
    select = tuxpaint_drawings if args.set == "drawings" else tuxpaint_photos
    photos = select(root / STAMPS_DIR)
    per_label = Counter(label for label, _ in photos)
    kept = [(label, p) for label, p in photos if per_label[label] >= args.min_per_label]
    out: Path = args.out
    written: set[Path] = set()
    for label, src in kept:
        dst = out / label / f"{src.stem}.png"
        if dst in written:  # one name in two sub-folders of a label: keep both
            dst = dst.with_name(f"{src.parent.name}_{src.stem}.png")
        written.add(dst)
        write_on_white(src, dst, args.max_side)
    labels = sorted({label for label, _ in kept})
    print(f"{len(kept)} images in {len(labels)} labels written to {out}")
    for label in labels:
        print(f"  {label}: {per_label[label]}")
    return 0


def cmd_mate(args: argparse.Namespace) -> int:
    root = fetch_package("mate-backgrounds", args.cache)
    out: Path = args.out / "mate"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for src in sorted((root / "usr/share/backgrounds").rglob("*")):
        if src.suffix.lower() in (".jpg", ".jpeg", ".png") and src.is_file():
            shutil.copyfile(src, out / src.name)
            n += 1
    print(f"{n} photos written to {out}")
    return 0


# The committed test photos (tests/data/photos): (source under the stamps dir, output name).
# The horse is stored rotated with an EXIF Orientation tag; see cmd_testset.
TESTSET: tuple[tuple[str, str], ...] = (
    ("animals/birds/crowned_crane.png", "crowned_crane.jpg"),
    ("animals/fish/lionfish.png", "lionfish.png"),
    ("animals/mammals/giraffe.png", "giraffe.jpg"),
    ("animals/mammals/equines/horse.png", "horse_exif_rot90.jpg"),
    ("food/fruit/pineapple.png", "pineapple.jpg"),
    ("plants/flowers/daffodil.png", "daffodil.jpg"),
    ("plants/mushrooms/cep.png", "cep_mushroom.jpg"),
    ("space/planets/6_saturn.png", "saturn.jpg"),
)


def cmd_testset(args: argparse.Namespace) -> int:
    """Writes the small committed test photos: on white, longest side <= 400 px.

    ``horse_exif_rot90.jpg`` has its pixels rotated 90° counter-clockwise and carries EXIF
    Orientation 6 ("rotate 90° clockwise to display"), so a decoder that honours EXIF shows the
    horse upright and one that ignores it shows it lying on its side.
    """
    from PIL import Image

    root = fetch_package("tuxpaint-stamps-default", args.cache)
    stamps = root / STAMPS_DIR
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for rel, name in TESTSET:
        src = stamps / rel
        if not src.exists():  # the category layout moves between package versions
            matches = sorted(stamps.rglob(Path(rel).name))
            if not matches:
                raise RuntimeError(f"{rel} not found in the package")
            src = matches[0]
        tmp = out / (name + ".tmp.png")
        write_on_white(src, tmp, 400)
        with Image.open(tmp) as im:
            img = im.convert("RGB")
        tmp.unlink()
        dst = out / name
        if name.endswith(".png"):
            img.save(dst, format="PNG", optimize=True)
        elif "exif_rot90" in name:
            exif = Image.Exif()
            exif[0x0112] = 6  # Orientation: the stored pixels need a 90° clockwise turn
            img.transpose(Image.Transpose.ROTATE_90).save(dst, format="JPEG", quality=85, exif=exif)
        else:
            img.save(dst, format="JPEG", quality=85)
        print(f"{dst}  {dst.stat().st_size // 1024} KB  from {src.relative_to(root)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download/unpack cache (%(default)s)")
    sub = parser.add_subparsers(dest="set", required=True)
    p = sub.add_parser("tuxpaint", help="labelled photo cut-outs from tuxpaint-stamps-default")
    p.add_argument("--out", type=Path, required=True, help="output directory (OUT/<label>/<name>.png)")
    p.add_argument("--min-per-label", type=int, default=3, help="drop labels with fewer images (%(default)s)")
    p.add_argument("--max-side", type=int, default=None, help="downscale so the longest side is at most this")
    p.set_defaults(func=cmd_tuxpaint)
    p = sub.add_parser("drawings", help="the other tuxpaint stamps (drawings), labelled alike; none in tuxpaint")
    p.add_argument("--out", type=Path, required=True, help="output directory (OUT/<label>/<name>.png)")
    p.add_argument("--min-per-label", type=int, default=3, help="drop labels with fewer images (%(default)s)")
    p.add_argument("--max-side", type=int, default=512, help="downscale so the longest side is at most this")
    p.set_defaults(func=cmd_tuxpaint)
    p = sub.add_parser("testset", help="the small photos committed under tests/data/photos")
    p.add_argument("--out", type=Path, default=Path("tests/data/photos"), help="output directory (%(default)s)")
    p.set_defaults(func=cmd_testset)
    p = sub.add_parser("mate", help="landscape wallpapers from mate-backgrounds")
    p.add_argument("--out", type=Path, required=True, help="output directory (OUT/mate/)")
    p.set_defaults(func=cmd_mate)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
