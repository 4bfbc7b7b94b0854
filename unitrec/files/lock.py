"""One writer per output: an advisory lock on ``<out>.lock``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from unitrec.errors import RecordingError

__all__ = ["output_lock"]


@contextlib.contextmanager
def output_lock(out: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold ``<out>.lock`` while writing `out`; the lock file is removed at the end.

    Without `wait` a second process is refused at once (two runs of one output);
    with it, the caller waits its turn (the shards of one job finishing together,
    each checking whether it is the last). A process that locked a lock file which
    was removed meanwhile (the inode no longer at the path) has locked nothing, and
    tries again on the new file.
    """
    lock_path = out.with_name(out.name + ".lock")
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl; filelock's lock, with the same refusal
        with _portable_lock(out, lock_path, wait):
            yield
        return
    for _ in range(100 if wait else 5):
        fh = _open_lock(out, lock_path)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RecordingError(
                f"another process is writing {out} right now (lock {lock_path}); wait for it or "
                "choose another output"
            ) from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fh.fileno()).st_ino:
            break
        fh.close()  # locked a file that was removed meanwhile: try the new one
    else:
        raise RecordingError(f"cannot take the lock {lock_path}; is another process writing {out}?")
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding the lock
        fh.close()


def _open_lock(out: Path, lock_path: Path):
    try:
        return open(lock_path, "a+")
    except OSError as exc:  # a read-only folder or file system, a folder of another user
        raise RecordingError(f"cannot create the lock file {lock_path} ({exc.strerror or exc}): writing {out} "
                             f"needs a writable folder; make {lock_path.parent} writable, or write to another "
                             "folder") from None


@contextlib.contextmanager
def _portable_lock(out: Path, lock_path: Path, wait: bool) -> Iterator[None]:
    import filelock

    lock = filelock.FileLock(lock_path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RecordingError(f"another process is writing {out} right now (lock {lock_path}); wait for it or "
                             "choose another output") from None
    except OSError as exc:  # a read-only folder
        raise RecordingError(f"cannot create the lock file {lock_path} ({exc.strerror or exc}): writing {out} "
                             f"needs a writable folder; make {lock_path.parent} writable, or write to another "
                             "folder") from None
    try:
        yield
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            lock_path.unlink()
