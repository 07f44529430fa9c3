"""Writing files so that a crash or a second process never leaves a half-made one behind.

- Atomic writes: the content goes to a uniquely named temporary file in the target's folder and is
  renamed over the target, so readers see the old file or the new one, never a mix, and two
  processes filling the same cache entry cannot clobber each other's temporary file.
- :class:`RunLock`: an advisory lock (``flock``) on a run directory, held for as long as a process
  writes into it. The kernel releases it when the process dies, so a lock left by a killed run
  never blocks ``--resume``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .errors import UserError

LOCK_NAME = ".multidiff.lock"


@contextlib.contextmanager
def _temporary_next_to(path: Path) -> Iterator[Path]:
    """A fresh temporary path in path's folder; removed if the block fails before renaming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:  # mkstemp makes it private (0600); the file it becomes gets the mode any new file gets
        os.fchmod(fd, _target_mode(path))
    finally:
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _target_mode(path: Path) -> int:
    """The replaced file's own mode, or what ``open()`` would give a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """``writer(tmp)`` fills a temporary file that then replaces ``path`` in one rename."""
    path = Path(path)
    with _temporary_next_to(path) as tmp:
        writer(tmp)
        os.replace(tmp, path)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def user_path_error(exc: OSError, what: str) -> UserError:
    """A one-line error for a file operation that failed on a path the user chose."""
    reason = exc.strerror or str(exc)
    where = exc.filename or ""
    return UserError(f"cannot {what}{f' {where}' if where else ''}: {reason}")


class RunLock:
    """Exclusive lock on a directory (``DIR/.multidiff.lock``); ``acquire`` raises a one-line error
    naming the holder when another live process has it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: Optional[int] = None
        self._made_directory = False

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self._made_directory = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise user_path_error(exc, "write into") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{self.directory} is in use by another multidiff process{holder}; wait for it to finish or use another --out"
                ) from None
            raise user_path_error(exc, "lock") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; a directory this lock created and nothing else wrote into goes too (a
        refused or failed command leaves no folder behind)."""
        if self._fd is None:
            return
        if self._made_directory and not has_content(self.directory):
            with contextlib.suppress(OSError):
                self.path.unlink()
                self.directory.rmdir()
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def has_content(directory: Path) -> bool:
    """True when a directory holds anything besides a lock file (a path that is a file counts too)."""
    directory = Path(directory)
    if not directory.exists():
        return False
    if not directory.is_dir():
        return True
    return any(p.name != LOCK_NAME for p in directory.iterdir())


def clear_directory(directory: Path) -> None:
    """Remove everything in ``directory`` except its lock file (``--overwrite`` under the lock)."""
    import shutil

    for p in Path(directory).iterdir():
        if p.name == LOCK_NAME:
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            raise user_path_error(exc, "remove") from None
