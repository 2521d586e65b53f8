"""Where a model comes from: ``hf://owner/name@revision``, a local directory, or the built-in demo.

The text form is what users write in ``config/config.yaml``; :class:`Source` is what the rest of the
package passes around, so that one parser decides what a source string means.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import UserError

HF_SCHEME = "hf://"
DEFAULT_REVISION = "main"
DEMO = "demo"

#: Characters git refuses in a ref name (plus whitespace); enough to catch typos early with a clear message.
_BAD_REVISION = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|//|^/|/$|\.lock$|^-")


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed model source.  ``kind`` is ``"hf"``, ``"local"`` or ``"demo"``."""

    kind: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def uri(self) -> str:
        """The canonical text form, as recorded in manifests (the revision is always explicit)."""
        if self.kind == "hf":
            return f"{HF_SCHEME}{self.repo_id}@{self.revision}"
        if self.kind == "local":
            return str(self.path)
        return DEMO

    def __str__(self) -> str:
        return self.uri


def parse_source(text: str, *, base_dir: Path | None = None) -> Source:
    """Parse a model source string.

    ``hf://owner/name@rev`` pins a branch, tag or commit; ``hf://owner/name`` means branch ``main``.
    ``demo`` is the embedded demo model.  Anything else is a local directory, relative paths being
    taken from ``base_dir`` (the directory of the config file, or the working directory).
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(
            f"model source {text!r} is empty: write hf://owner/name[@revision], a local directory, or 'demo'"
        )
    text = text.strip()
    if text == DEMO:
        return Source(kind="demo")
    if text.startswith(HF_SCHEME):
        return _parse_hf(text)
    if "://" in text:
        raise UserError(
            f"model source {text!r}: unknown scheme; write hf://owner/name[@revision] for a Hugging Face repo "
            "or a plain path for a local directory"
        )
    return _parse_local(text, base_dir)


def _parse_hf(text: str) -> Source:
    body = text[len(HF_SCHEME) :]
    repo_id, sep, revision = body.partition("@")
    if sep and not revision:
        raise UserError(f"model source {text!r}: nothing after '@'; name a branch, tag or commit, or drop the '@'")
    revision = revision or DEFAULT_REVISION
    if repo_id.count("/") != 1:
        raise UserError(
            f"model source {text!r}: the repo id must be owner/name "
            "(e.g. hf://line-corporation/japanese-large-lm-3.6b-instruction-sft@main)"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"model source {text!r}: invalid repo id: {err}") from None
    if _BAD_REVISION.search(revision):
        raise UserError(
            f"model source {text!r}: {revision!r} is not a valid git revision; use a branch, a tag or a commit sha"
        )
    return Source(kind="hf", repo_id=repo_id, revision=revision)


def _parse_local(text: str, base_dir: Path | None) -> Source:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if not path.is_dir():
        hint = (
            f" (for the Hugging Face repo write hf://{text})"
            if re.fullmatch(r"[\w.-]+/[\w.-]+", text)
            else ""
        )
        raise UserError(f"model source {text!r}: no such directory {path}{hint}")
    return Source(kind="local", path=path)
