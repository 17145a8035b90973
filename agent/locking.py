"""Advisory whole-file locks, shared or exclusive, the same way on POSIX and on Windows.

On Windows the locks are portalocker's (``LockFileEx`` through pywin32, which alone gives
Windows a shared lock); on POSIX they are ``flock``, which is also what portalocker calls
there. The agent on POSIX calls ``flock`` itself: importing portalocker costs more memory
than the agent's idle budget leaves (docs/performance.md), and each platform's locking
code is imported only on that platform. The tests run both lockers on Linux against one
another through this one interface.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import portalocker


class Locker(Protocol):
    """Takes and releases locks on open file descriptors; a closed descriptor holds none."""

    name: str

    def try_lock(self, fd: int, *, shared: bool) -> bool:
        """Take the lock without waiting; False when another holder's lock conflicts."""
        ...

    def lock(self, fd: int, *, shared: bool) -> None:
        """Take the lock, waiting as long as another holder's lock conflicts."""
        ...

    def unlock(self, fd: int) -> None: ...


class PortaLocker:
    """portalocker's locks (``LockFileEx`` on Windows): a lock belongs to the holding process."""

    name = "portalocker"

    def __init__(self) -> None:
        import portalocker  # imported only where it is used: Windows, and the tests

        self._portalocker = portalocker

    def try_lock(self, fd: int, *, shared: bool) -> bool:
        flags = self._flags(shared) | self._portalocker.LockFlags.NON_BLOCKING
        try:
            self._portalocker.lock(fd, flags)
        except self._portalocker.AlreadyLocked:
            return False
        return True

    def lock(self, fd: int, *, shared: bool) -> None:
        self._portalocker.lock(fd, self._flags(shared))

    def unlock(self, fd: int) -> None:
        self._portalocker.unlock(fd)

    def _flags(self, shared: bool) -> portalocker.LockFlags:
        flags = self._portalocker.LockFlags
        return flags.SHARED if shared else flags.EXCLUSIVE


if sys.platform != "win32":  # flock: POSIX only, like its module
    import fcntl

    class FlockLocker:
        """POSIX ``flock``: a lock belongs to the open file, so a child given the fd keeps it."""

        name = "flock"

        def try_lock(self, fd: int, *, shared: bool) -> bool:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        def lock(self, fd: int, *, shared: bool) -> None:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)

        def unlock(self, fd: int) -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def default_locker() -> Locker:
    """portalocker on Windows, ``flock`` itself elsewhere (the same lock, less memory)."""
    if sys.platform == "win32":
        return PortaLocker()
    else:  # an else, not a fall-through, is what mypy --platform win32 leaves unchecked
        return FlockLocker()
