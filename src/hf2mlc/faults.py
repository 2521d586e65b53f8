"""Failures of the machine rather than of the input (disk full, read-only or immutable results/),
turned into the one line every expected failure ends in.

These arrive as ``OSError`` from whichever write hit them (a tokenizer file, a weight shard, a manifest);
the traceback says where in hf2mlc, which the user cannot act on, and hides what they can: which file
system is full or read-only and what to do about it.  Whatever the stage had written is in its
temporary directory, which :func:`hf2mlc.manifest.atomic_output_dir` removes, so nothing that looks
complete is left behind.
"""

from __future__ import annotations

import errno
import os

from .errors import UserError


def one_line(message: str) -> str:
    """A message as one line: some libraries' errors (torch's unpickling refusal) span many."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def explain_os_error(err: OSError, *, output: str | os.PathLike[str] | None) -> UserError | None:
    """A :class:`UserError` for a full, read-only or unwritable file system; ``None`` for other errors."""
    where = os.fspath(err.filename) if err.filename else (os.fspath(output) if output else "the output")
    directory = os.path.dirname(os.path.abspath(where)) if err.filename else where
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"no space left on the device holding {where} ({err.strerror}); free space there (`df -h {directory}`) "
            "and run again. Nothing of this attempt was kept."
        )
    if err.errno == errno.EROFS:
        return UserError(
            f"{where} is on a read-only file system ({err.strerror}); make results/ writable (remount, or run in "
            "a writable copy of the workflow) and run again."
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return UserError(
            f"cannot write {where} ({err.strerror}); make results/ writable (`chmod -R u+w results`; if "
            "`lsattr` shows it immutable, `chattr -R -i results`) and run again."
        )
    return None


def as_user_error(err: BaseException, *, output: str | os.PathLike[str] | None) -> UserError | None:
    """``err`` as the one-line :class:`UserError` the user sees, or ``None`` when it is a bug."""
    if isinstance(err, UserError):
        return UserError(one_line(str(err)))
    if isinstance(err, OSError):
        user = explain_os_error(err, output=output)
        return None if user is None else UserError(one_line(str(user)))
    return None
