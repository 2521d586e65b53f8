"""A local checkpoint directory as a model source, and the one way a source file enters results/.

Every file is copied (or reflinked, where the file system can share blocks copy-on-write), never hard
linked: a hard link would let an edit of the user's directory or of the Hugging Face cache change
``results/download`` behind its manifest's back.  Measured on ext4 (no reflinks), a page-cached
100 MB file copies in 0.04 s against 0.09 s to hash it, so the copy costs less than the manifest's hash
and, for LINE's 7 GB, about 3 s and the disk space of one more copy.

A symlink inside the source that points outside it is refused: following it would copy whatever it
names (``/etc/passwd`` in the adversarial test) into results/ and, from there, into a published bundle.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UserError
from ..manifest import Stopwatch, atomic_output_dir, write_manifest
from .selection import check_weight_index, select_build_files
from .source import Source

_COPY_PROGRESS_MIN = 64 << 20
#: Linux's FICLONE ioctl (_IOW(0x94, 9, int)): a copy-on-write clone on btrfs, XFS, bcachefs.
_FICLONE = 0x40049409


def download_local(source: Source, out_dir: Path) -> dict[str, Any]:
    """Copy the files a build needs from a local checkpoint into ``out_dir`` with a manifest."""
    root = source.path
    assert root is not None
    if not root.is_dir():
        raise UserError(f"model source {root}: no such directory")
    names = [p.name for p in root.iterdir() if p.is_file()]
    selection = select_build_files(names, where=str(root))
    for name in selection.files:
        check_inside(root, root / name)
    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("materialize"):
            for name in selection.files:
                place_copy(root / name, tmp / name)
        check_weight_index(tmp, selection, where=str(root))
        manifest = write_manifest(
            tmp,
            stage="download",
            params={"source": str(root)},
            timings=watch.timings,
            extra={
                "source": {"kind": "local", "uri": str(root), "path": str(root)},
                "weights_format": selection.weights_format,
                "skipped": list(selection.skipped),
                "checks": {},
            },
        )
    return manifest


def check_inside(root: Path, path: Path) -> None:
    """Refuse a file of the source that is (or passes through) a symlink to somewhere outside it."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise UserError(
            f"model source {root}: {path.name} is a symlink to {real}, outside the source directory; "
            "copy the file into the directory (or point the source at the directory that holds it)."
        )


def place_copy(src: Path, dst: Path) -> None:
    """Put an independent copy of ``src`` at ``dst``: a reflink where possible, else a byte copy."""
    real = Path(os.path.realpath(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    size = real.stat().st_size
    with open(real, "rb") as fin, open(dst, "wb") as fout:
        if not _reflink(fin.fileno(), fout.fileno()):
            with tqdm(
                total=size, unit="B", unit_scale=True, desc=f"copy {dst.name}", leave=False,
                disable=True if size < _COPY_PROGRESS_MIN else None,
            ) as bar:
                while chunk := fin.read(8 << 20):
                    fout.write(chunk)
                    bar.update(len(chunk))
    shutil.copystat(real, dst)


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        return True
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EBADF):
            return False
        raise
