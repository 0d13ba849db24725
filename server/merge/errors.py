"""The one exception a merge raises for a problem with its inputs."""

from __future__ import annotations


class MergeError(Exception):
    """A problem with BASE, ADAPTER or OUT that the user can fix.

    The command prints its message as one plain line (no traceback) and exits non-zero; a merge
    raises it before writing anything, or removes what it had written.
    """
