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
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

LOCK_NAME = ".multidiff.lock"
HOLDER_NAME = ".multidiff.lock.pid"  # the holder's pid, for the error a second process gets
LOCK_FILES = (LOCK_NAME, HOLDER_NAME)


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
    """Exclusive lock on a directory (``DIR/.multidiff.lock``, through ``filelock``: flock on POSIX,
    msvcrt on Windows, released by the system when the process dies); ``acquire`` raises a one-line
    error naming the holder's pid when another process has it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.holder_path = self.directory / HOLDER_NAME
        self._lock: Any = None
        self._made_directory = False

    def acquire(self) -> "RunLock":
        from filelock import FileLock, Timeout

        try:
            self._made_directory = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise user_path_error(exc, "write into") from None
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"{self.directory} is in use by another multidiff process{_read_holder(self.holder_path)}; "
                            "wait for it to finish or use another --out") from None  # fmt: skip
        except OSError as exc:
            raise user_path_error(exc, "lock") from None
        self._lock = lock
        with contextlib.suppress(OSError):  # only a hint for the error above
            self.holder_path.write_text(f"{os.getpid()}\n")
        return self

    def release(self) -> None:
        """Drop the lock; a directory this lock created and nothing else wrote into goes too (a
        refused or failed command leaves no folder behind)."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self.holder_path.unlink()
        remove = self._made_directory and not has_content(self.directory)
        self._lock.release()
        self._lock = None
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
                self.directory.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        pid = path.read_text()[:32].strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def has_content(directory: Path) -> bool:
    """True when a directory holds anything besides a lock file (a path that is a file counts too)."""
    directory = Path(directory)
    if not directory.exists():
        return False
    if not directory.is_dir():
        return True
    return any(p.name not in LOCK_FILES for p in directory.iterdir())


def clear_directory(directory: Path) -> None:
    """Remove everything in ``directory`` except its lock file (``--overwrite`` under the lock)."""
    import shutil

    for p in Path(directory).iterdir():
        if p.name in LOCK_FILES:
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            raise user_path_error(exc, "remove") from None
