"""A workdir on a local disk or a shared mount: files written to a hidden temporary beside them
(`.<name>.<random>.tmp`) and renamed into place, groups filled as a hidden folder and renamed,
locks by `flock` (released by the OS when their holder dies)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from trainables.storage.base import Store

TEMPORARY_GLOB = ".*.tmp"  # what the writers here name their temporaries
_SWAPPED_ASIDE = ".old"  # suffix of an old folder `replace_group` moved aside


class LocalStore(Store):
    """The workdir `root`, a folder on a local disk or a shared mount."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self._root = Path(root)

    def path(self, key: str = "") -> Path:
        """The key as a local path."""
        return self._root / key if key else self._root

    def uri(self, key: str = "") -> str:
        return str(self.path(key))

    def key_of(self, path: str | os.PathLike) -> str:
        """The key of a local path under the workdir (ValueError for one outside it)."""
        path, root = Path(path), self._root
        if path.is_absolute() != root.is_absolute():
            path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
        return path.relative_to(root).as_posix()

    # -- files ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def read_head(self, key: str, size: int) -> bytes:
        with open(self.path(key), "rb") as f:
            return f.read(size)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Written to a hidden temporary, flushed to disk, renamed into place."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list_files(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self._root).as_posix() for p in folder.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    def list_children(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []

    def version(self, key: str) -> str:
        stat = self.path(key).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def set_aside(self, key: str, *, suffix: str = ".corrupt") -> str:
        aside, k = key + suffix, 1
        while self.path(aside).exists():
            aside, k = f"{key}{suffix}.{k}", k + 1
        os.rename(self.path(key), self.path(aside))
        return aside

    # -- groups of files ----------------------------------------------------------------------
    def commit_group(self, prefix: str, files: Mapping[str, bytes]) -> bool:
        """Filled as a hidden sibling folder and renamed into place."""
        final = self.path(prefix)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            _fill(tmp, files)
            if final.exists():
                shutil.rmtree(tmp)
                return False
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def is_committed(self, prefix: str) -> bool:
        return self.path(prefix).is_dir()  # a group folder appears by a rename, whole

    def replace_group(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """A reader sees the old folder or the new one, never a mix; one replacement of a folder
        runs at a time (a lock beside it), and leftovers of one killed mid-way are removed
        first. The new folder is world-readable (a shared report), unlike a bare `mkdtemp`."""
        final = self.path(prefix)
        final.parent.mkdir(parents=True, exist_ok=True)
        with _flock(final.parent / f".{final.name}.lock"):
            # a killed replacement's build folder (`.tmp`) or the old folder it moved aside (`.tmp.old`)
            for stale in final.parent.glob(f".{final.name}.*.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
            new = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
            try:
                new.chmod(0o755)
                _fill(new, files)
                _swap(new, final)
            except BaseException:
                shutil.rmtree(new, ignore_errors=True)
                raise

    # -- concurrency ------------------------------------------------------------------------
    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        return _flock(self.path(key))

    def remove_temporaries(self, prefix: str) -> int:
        root = self.path(prefix)
        removed = 0
        if not root.is_dir():
            return removed
        for path in sorted(root.rglob(TEMPORARY_GLOB), key=lambda p: len(p.parts)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
            else:
                continue  # inside a folder removed above
            removed += 1
        return removed


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An advisory lock held for the `with` block (released by the OS if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fill(folder: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _swap(new: Path, final: Path) -> None:
    """Move the complete folder `new` to `final`. A folder cannot be renamed over a non-empty
    one, so an old `final` is renamed aside first, restored if the second rename fails, and
    removed after it."""
    old = None
    if final.exists():
        old = new.with_name(new.name + _SWAPPED_ASIDE)  # unique, as `new` is
        os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
