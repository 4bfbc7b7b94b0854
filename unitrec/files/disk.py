"""Writes that survive a full disk, a crash and a second program.

Room is reserved before a batch is written (``fallocate`` where the file system has
it), data is synced before the rows that hold it are marked done, a whole file is
made aside and renamed into place, and a path that is not an HDF5 file is never
written over.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import h5py

from unitrec.errors import RecordingError
from unitrec.files.layout import MARGIN

__all__ = ["finisher", "open_existing", "refuse_foreign", "reserve_space", "written_whole"]


def no_space(exc: BaseException) -> bool:
    """ENOSPC from Python (OSError) or from HDF5 (a RuntimeError whose text carries errno 28)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "errno = 28" in str(exc) \
        or "No space left on device" in str(exc)


def disk_error(exc: BaseException, path: Path) -> RecordingError:
    if no_space(exc):
        return RecordingError(f"no space left on device writing {path}; free some space and rerun the "
                              "same command to resume")
    return RecordingError(f"writing {path} failed: {type(exc).__name__}: {' '.join(str(exc).split())}")


def refuse_foreign(path: Path, hint: str = "choose another output path") -> None:
    """Never delete or overwrite a file that is not an HDF5 file (an image, notes ...)."""
    if path.is_file() and path.stat().st_size > 0 and not h5py.is_hdf5(path):
        raise RecordingError(f"{path} exists and is not an HDF5 file; unitrec will not overwrite it: {hint}")


def finisher() -> str:
    """Who finishes a file (``host:pid``), so that a run can tell its own work from another's."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def reserve_space(h5: h5py.File, nbytes: int) -> None:
    """Reserve room past the end of an open file for `nbytes` more (and HDF5's metadata), or raise
    ``OSError(ENOSPC)`` while the file is still whole (see ``RecordingFile._reserve``)."""
    need = nbytes + nbytes // 16 + MARGIN
    if not _fallocate(h5.id.get_vfd_handle(), h5.id.get_filesize(), need):
        if shutil.disk_usage(Path(h5.filename).parent).free < need:
            raise OSError(errno.ENOSPC, "No space left on device")


def raw_rows(ds: h5py.Dataset) -> bool:
    """Chunked by whole rows (``(k, *shape[1:])``) with no filter: a chunk's bytes are its rows'."""
    return (ds.chunks is not None and ds.ndim >= 1 and tuple(ds.chunks[1:]) == tuple(ds.shape[1:])
            and ds.id.get_create_plist().get_nfilters() == 0)


def _fallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve disk blocks without changing the file's size; False where unsupported.

    Raises ``OSError(ENOSPC)`` when the disk cannot hold `length` more bytes.
    """
    fallocate = _libc_fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, 1, offset, length) == 0:  # 1 = FALLOC_FL_KEEP_SIZE
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSPC:
        raise OSError(errno.ENOSPC, "No space left on device")
    return False  # EOPNOTSUPP (NFS, some cluster file systems), EINTR ...


@functools.lru_cache(maxsize=1)
def _libc_fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


@contextlib.contextmanager
def written_whole(tmp: Path, dest: Path) -> Iterator[h5py.File]:
    """A new HDF5 file written under `tmp`, named `dest` only once it is whole and on disk.

    A crash leaves at most `tmp` (removed here when the error is a Python one), never
    a half-written `dest`.
    """
    try:
        # a link (or anything) at the temporary name is removed, never written through;
        # "w-" creates exclusively (O_EXCL), so a link made meanwhile is refused, not followed
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        with h5py.File(tmp, "w-", track_order=True) as h5:
            yield h5
            h5.flush()
            os.fsync(h5.id.get_vfd_handle())
        os.replace(tmp, dest)
        fsync_folder(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def release_reserved(path: Path) -> None:
    """Free disk blocks reserved past the end of a file (see ``RecordingFile._reserve``)."""
    try:
        size = path.stat().st_size
        os.truncate(path, size + 1)
        os.truncate(path, size)
    except OSError:
        pass  # nothing to release, or a read-only file: the checks that follow will say


def datasync(fd: int) -> None:
    """Push a file's data to the disk: ``fdatasync`` where there is one (Linux), ``F_FULLFSYNC``
    on macOS (its ``fsync`` stops at the drive's cache), else ``fsync`` (Windows: ``_commit``)."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
        return
    if sys.platform == "darwin":
        import fcntl

        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except (OSError, AttributeError):
            pass  # a file system without it (network, FAT): fsync below
    os.fsync(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable. Windows cannot open a folder (nor needs to: its
    renames are journaled), so there is nothing to do where ``os.open`` refuses one."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return  # Windows: os.open of a directory gives EACCES
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise  # some file systems cannot fsync a directory; a real I/O error is reported
    finally:
        os.close(dir_fd)


def open_existing(path: Path, mode: str = "r", *, unfinished: bool = False) -> h5py.File:
    """Open a recording that should exist, turning HDF5's errors into one clear line."""
    what = "unfinished recording" if unfinished else "recording"
    try:
        return h5py.File(path, mode)
    except BlockingIOError:
        raise RecordingError(f"the {what} {path} is open in another program (a notebook, a viewer?) or "
                             "another run is writing it; close it and rerun") from None
    except (OSError, RuntimeError) as exc:
        raise RecordingError(f"the {what} {path} cannot be opened, it is damaged ({' '.join(str(exc).split())}); "
                             "start over with --overwrite (overwrite=True)") from None
