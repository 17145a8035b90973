"""Advisory whole-file locks, shared or exclusive, the same way on POSIX and on Windows.

On Windows the locks are portalocker's (``LockFileEx`` through pywin32, which alone gives
Windows a shared lock); on POSIX they are ``flock``, which is also what portalocker calls
there. The agent on POSIX calls ``flock`` itself: importing portalocker costs more memory
than the agent's idle budget leaves (docs/performance.md), and each platform's locking
code is imported only on that platform. The tests run both lockers on Linux against one
another through this one interface.
"""

from __future__ import annotations

import os
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


class FlockLocker:
    """POSIX ``flock``: a lock belongs to the open file, so a child given the fd keeps it."""

    name = "flock"

    def __init__(self) -> None:
        import fcntl  # POSIX only

        self._fcntl = fcntl

    def try_lock(self, fd: int, *, shared: bool) -> bool:
        mode = self._fcntl.LOCK_SH if shared else self._fcntl.LOCK_EX
        try:
            self._fcntl.flock(fd, mode | self._fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def lock(self, fd: int, *, shared: bool) -> None:
        self._fcntl.flock(fd, self._fcntl.LOCK_SH if shared else self._fcntl.LOCK_EX)

    def unlock(self, fd: int) -> None:
        self._fcntl.flock(fd, self._fcntl.LOCK_UN)


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


def default_locker() -> Locker:
    """portalocker on Windows, ``flock`` itself elsewhere (the same lock, less memory)."""
    return PortaLocker() if os.name == "nt" else FlockLocker()
