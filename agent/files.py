"""The agent's own state on disk (journal, spool): private to its user, never followed.

What the journal and the spool hold decides what runs (a spooled command is signalled
later; a journalled one is never signalled again), and the agent runs as root, so a file
another local user could write or replace is a way in. Directories are created 0700 and
files 0600; at start-up a directory or file that belongs to another user, is writable by
group or others, or is a symbolic link makes the agent refuse to start. The checks are
POSIX only: where ``os.getuid`` does not exist (Windows) ACLs decide, not modes, and a
directory the agent creates there is given one for SYSTEM and Administrators only.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from agent.windows import acl

# Not following a link planted where a state file should be; 0 where the OS has no flag.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(ValueError):
    """A state file or directory others could have written: the agent does not trust it."""


def private_directory(path: Path) -> None:
    """Create ``path`` (agent-only) when missing; raise UnsafeFile when others could write in it."""
    create_private(path)
    check_private(path)


def create_private(path: Path, *, windows: bool = os.name == "nt") -> None:
    """Create ``path`` when missing: 0700 on POSIX, SYSTEM and Administrators only on Windows."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if windows:
        acl.restrict(path)


def check_private(path: Path) -> None:
    """Raise UnsafeFile unless ``path`` is this user's (or root's) and only theirs to write.

    Root is trusted as an owner: it can rewrite anything the agent reads anyway.
    """
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(f"{path} is a symbolic link; the agent does not follow links here")
    me = getuid()
    if info.st_uid not in (me, 0):
        raise UnsafeFile(f"{path} belongs to uid {info.st_uid}, not to this agent's user ({me})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise UnsafeFile(f"{path} is writable by group or others (mode {mode:04o}): chmod go-w it")


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    if sys.platform == "win32":  # directories cannot be opened there; NTFS journals renames
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
