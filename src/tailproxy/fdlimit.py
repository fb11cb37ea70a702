"""The file-descriptor limit: tailproxy holds several fds per connection of the program (its
socket, the dial, the relay), so at the common soft limit of 1024 a program with a few hundred
connections starved it (EMFILE, parked connections never answered). tailproxy raises its own soft
limit to the hard limit; the program gets back the limit it had, because programs that use
select() depend on staying below 1024."""
from __future__ import annotations

import resource

_original_soft: int | None = None     # what the program is to get back


def raise_soft_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the original is remembered); returns the new."""
    global _original_soft
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _original_soft is None:
        _original_soft = soft
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


class programs_own_limit:     # noqa: N801 (used as `with programs_own_limit():`)
    """Within the block the soft limit is the one tailproxy started with: spawn the program
    here so that it inherits it. (subprocess has no per-child rlimit, and preexec_fn is unsafe
    with threads.) The block runs before the program exists and so before any of its traffic;
    nothing of ours needs an fd above the old limit meanwhile. (A class, not contextlib: an
    attaching run imports this on its way to the program's exec, and contextlib costs ~9 ms.)"""

    def __enter__(self) -> None:
        current, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._restore = None
        if _original_soft is not None and _original_soft != current:
            resource.setrlimit(resource.RLIMIT_NOFILE, (_original_soft, hard))
            self._restore = (current, hard)

    def __exit__(self, *exc) -> None:
        if self._restore is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self._restore)
