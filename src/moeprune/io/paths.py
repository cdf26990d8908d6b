"""Where moeprune may write, and how: one check of every output path against every input, and
atomic, no-replace finishing of files and folders that an interrupt cannot leave half done.

Every command that writes calls `check_output` with all of its inputs (model folders, STATS,
plans) before it reads a weight: an output equal to an input, inside one, containing one, or
a link to one is refused, so no command can delete or overwrite what it reads. Files and folders
are built under a hidden temporary name beside the target and moved into place with a rename
that refuses to replace anything (``renameat2(RENAME_NOREPLACE)``, or a hard link for files), so
two runs racing for the same new output cannot silently replace each other's result; an existing
target is replaced only when the caller asked to overwrite it, by an atomic exchange.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from moeprune.errors import Interrupted, OutputError

STOP_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None), getattr(signal, "SIGQUIT", None)) if s
)
"""Signals that stop a run: each becomes KeyboardInterrupt (the CLI installs the handlers)."""

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_RENAMEAT2 = _renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system or file system lacks it."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def move_into_place(src: Path, dst: Path, *, replace: bool) -> None:
    """Rename ``src`` to ``dst``. Without ``replace``, fail (OutputError) if ``dst`` exists, even
    if it appeared a moment ago; with it, an existing ``dst`` is swapped out atomically and removed
    (readers see the old or the new one, never neither)."""
    if replace and dst.exists():
        if dst.is_dir() != src.is_dir():
            raise OutputError(f"{dst} exists and is not a {'folder' if src.is_dir() else 'file'}")
        if src.is_dir():
            if not _rename2(src, dst, _RENAME_EXCHANGE):  # no atomic exchange: two renames
                old = dst.parent / f".{dst.name}.moeprune-old-{os.getpid()}"
                os.rename(dst, old)
                os.rename(src, dst)
                src = old
            shutil.rmtree(src, ignore_errors=True)  # src now holds the old output
        else:
            os.replace(src, dst)
        return
    try:
        if not _rename2(src, dst, _RENAME_NOREPLACE):
            if src.is_dir():
                if dst.exists() or dst.is_symlink():
                    raise FileExistsError(errno.EEXIST, "exists", str(dst))
                os.rename(src, dst)
            else:
                os.link(src, dst)  # fails if dst exists
                os.unlink(src)
    except FileExistsError:
        raise OutputError(
            f"{dst} already exists (another run may have written it meanwhile); pass --overwrite"
        ) from None


def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""The mode of every file moeprune writes: what ``open`` gives (0644 under the usual umask),
also for files written by libraries that create them private (safetensors: 0600)."""


def set_file_mode(path: Path) -> None:
    os.chmod(path, FILE_MODE)


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def check_output(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> Path:
    """Refuse an output path that is, contains, sits inside, or links to any of ``inputs``
    (folders or files that the command reads); return the output as given."""
    out = _resolved(output)
    for given in inputs:
        src = _resolved(given)
        if out == src:
            raise OutputError(f"{output} is the input {given}; choose another output")
        if src in out.parents:
            raise OutputError(f"{output} is inside the input {given}; choose another output")
        if out in src.parents:
            raise OutputError(f"{output} contains the input {given}; choose another output")
    return Path(output)


def check_new(path: Path, overwrite: bool, kind: str) -> None:
    """One rule for every command: an existing output is replaced only with ``overwrite``, and
    only by the same kind of thing (``kind`` is ``file`` or ``folder``). A file's folder must
    exist; a folder's missing parents are created (and removed again if the run fails)."""
    if not (path.exists() or path.is_symlink()):
        if kind == "file" and not path.parent.is_dir():
            raise OutputError(f"{path}: folder {path.parent} does not exist")
        return
    if not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_symlink() or (path.is_dir() != (kind == "folder")):
        raise OutputError(f"{path} exists and is not a {kind}; remove it or choose another output")


def partial_name(target: Path) -> Path:
    """The hidden temporary name a target is built under (beside it, same file system)."""
    return target.parent / f".{target.name}.moeprune-partial-{os.getpid()}"


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold stop signals while a short step that must not be cut (a swap, a clean-up) runs; the
    signals that arrived are listed in the yielded list. Only the main thread handles signals;
    elsewhere this holds nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in STOP_SIGNALS}
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _remove(path: Path) -> None:
    with deferred_signals():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _finish(tmp: Path, target: Path, overwrite: bool) -> None:
    with deferred_signals() as got:
        try:
            move_into_place(tmp, target, replace=overwrite)
        except BaseException:
            _remove(tmp)
            raise
    if got:
        raise Interrupted(f"interrupted after {target} was complete; it is in place")


def _os_error(e: OSError, target: Path) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"no space left on device while writing {target}; nothing was written")
    return OutputError(f"could not write {target}: {e.strerror or e}")


@contextmanager
def atomic_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it becomes ``target``
    (mode 0644 less the umask), on any failure or interrupt it is removed."""
    target = Path(target)
    check_new(target, overwrite, "file")
    tmp = partial_name(target)
    try:
        yield tmp
    except OSError as e:
        _remove(tmp)
        raise _os_error(e, target) from None
    except BaseException:
        _remove(tmp)
        raise
    _finish(tmp, target, overwrite)


def write_file(target: Path, data: str | bytes, overwrite: bool) -> None:
    """Write ``data`` to ``target`` atomically (see `atomic_file`)."""
    with atomic_file(target, overwrite) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


@contextmanager
def atomic_dir(target: Path, overwrite: bool, on_success: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success (after ``on_success(tmp)``, e.g. an
    fsync) it becomes ``target``; on any failure or interrupt it is removed and ``target`` is left
    as it was. Parent folders that did not exist are created, and removed again on failure."""
    target = Path(target).expanduser().absolute()
    check_new(target, overwrite, "folder")
    created: list[Path] = []  # missing parents, deepest first
    p = target.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    tmp = partial_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        tmp.mkdir()
        yield tmp
        if on_success is not None:
            on_success(tmp)
    except BaseException as e:
        _remove(tmp)
        for p in created:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        if isinstance(e, OSError):
            raise _os_error(e, target) from None
        raise
    _finish(tmp, target, overwrite)
