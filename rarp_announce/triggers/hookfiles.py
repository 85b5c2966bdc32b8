"""The files the root hook and its waiters write: the waiters' directory and the hook's log.

The hook runs as root, and a waiter_dir or log_file under a world-writable directory would let an
unprivileged user plant a symlink there that root then writes through (a root-owned 0600 file
overwritten with the domain XML). So the waiters' directory must be a directory of mode 0700
owned by root (the user the hook runs as), its files are opened relative to it with O_NOFOLLOW,
and the log must be a regular file of root's with one link.

hooks/qemu applies the same rules with the standard library only (its `unsafe_dir`, `open_log`);
the messages are the same word for word, whichever of the two finds the problem.
"""

from __future__ import annotations

import contextlib
import os
import stat

from rarp_announce.errors import AnnounceError, InputError


def _owner(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def unsafe_dir(status: os.stat_result) -> str | None:
    """Why a directory with this lstat/fstat may not hold the waiters' files, or None."""
    if stat.S_ISLNK(status.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(status.st_mode):
        return "is not a directory"
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid != os.geteuid() or mode != 0o700:
        return f"is owned by {_owner(status.st_uid)} (mode {mode:04o})"
    return None


def dir_rule(path: str, problem: str) -> str:
    """The one line that says what is wrong with waiter_dir `path` and how to fix it."""
    return (f"waiter_dir {path} {problem}: it must be a directory of mode 0700 owned by {_owner(os.geteuid())}; "
            "remove it and the hook recreates it")


def open_waiter_dir(path: str, *, create: bool) -> int | None:
    """A descriptor of waiter_dir `path` once checked (open the files in it relative to it, so a
    directory swapped after the check changes nothing); None when it is missing and not `create`.

    InputError when it is not root's alone; AnnounceError when it cannot be created or opened.
    """
    created = False
    if create:
        try:
            os.makedirs(os.path.dirname(path.rstrip("/")) or "/", exist_ok=True)
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise AnnounceError(f"cannot create waiter_dir {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise AnnounceError(f"cannot open waiter_dir {path}: it vanished as it was made") from None
        return None
    except OSError as exc:
        problem = None
        with contextlib.suppress(OSError):
            problem = unsafe_dir(os.lstat(path))
        if problem is None:
            raise AnnounceError(f"cannot open waiter_dir {path}: {exc.strerror}") from None
        raise InputError(dir_rule(path, problem)) from None
    try:
        status = os.fstat(fd)
        if created and status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # ours, just made: only an odd umask took bits from it
            status = os.fstat(fd)
        problem = unsafe_dir(status)
    except OSError as exc:
        os.close(fd)
        raise AnnounceError(f"cannot check waiter_dir {path}: {exc.strerror}") from None
    if problem is not None:
        os.close(fd)
        raise InputError(dir_rule(path, problem))
    return fd


def waiter_dir_problem(path: str) -> str | None:
    """For `hook status` and `hook install`: why an existing waiter_dir would be refused, or None
    (a missing one is fine: the hook makes it)."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check waiter_dir {path}: {exc.strerror}"
    problem = unsafe_dir(status)
    return dir_rule(path, problem) if problem is not None else None


def log_file_problem(path: str) -> str | None:
    """Why the hook would refuse to append to log_file `path` (and log to syslog instead), or None."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check log_file {path}: {exc.strerror}"
    if stat.S_ISLNK(status.st_mode):
        problem = "is a symbolic link"
    elif stat.S_ISFIFO(status.st_mode):
        problem = "is a FIFO"
    elif not stat.S_ISREG(status.st_mode):
        problem = "is not a regular file"
    elif status.st_nlink != 1:
        problem = f"has {status.st_nlink} hard links"
    elif status.st_uid != os.geteuid():
        problem = f"is owned by {_owner(status.st_uid)}"
    else:
        return None
    return (f"log_file {path} {problem}: it must be a regular file owned by {_owner(os.geteuid())} with one link; "
            "remove it and the hook recreates it (logging to syslog meanwhile)")
