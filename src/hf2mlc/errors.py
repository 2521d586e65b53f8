"""The one error type users see.

Every problem a user can fix (a bad config value, a missing file, a tokenizer that disagrees with the
template) is raised as :class:`UserError` whose message names the file or setting and says how to fix it.
Entry points (``scripts/*.py``, ``hf2mlc`` CLI) print that message alone, without a traceback, and exit
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input: the message names the file or setting and the fix."""
