"""Whether a sweep's workdir can be written, checked before a command writes anything there."""
from __future__ import annotations

import errno
import os
import tempfile
import uuid
from pathlib import Path

from orchestrator.errors import SpecError
from trainables.messages import shown
from trainables.storage import is_object_store, open_store

_PATH_CHARS = 4100  # longer paths cannot exist (PATH_MAX is 4096): show them whole up to that


def check_workdir(workdir: str | os.PathLike) -> None:
    """SpecError naming `workdir` if it is a file, lies under a file, has a name longer than its
    file system allows, or cannot be written; on an object store, if a probe object cannot be
    written there (no bucket, no credentials). Leaves nothing behind (the probe comes and goes)."""
    if is_object_store(workdir):
        _check_object_store(str(workdir))
        return
    path = Path(workdir).absolute()
    existing, missing = path, []
    try:
        while not _exists(existing):
            missing.append(existing.name)
            existing = existing.parent
    except OSError as err:  # e.g. a parent we may not search
        raise SpecError([f"workdir: {_shown(path)} cannot be read: {err.strerror}"], "workdir") from None
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {_shown(existing)}, which is a file"
        raise SpecError([f"workdir: {_shown(path)} {where}; expected a folder, or a path to create one at"],
                        "workdir")
    name_max = _name_max(existing)
    errors = [f"workdir: the name {shown(name)} is longer than the {name_max} bytes a file name may have there"
              for name in missing if len(os.fsencode(name)) > name_max]
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".impsweep-probe-", dir=existing))
    except OSError as err:
        target = "cannot be written" if existing == path else f"cannot be created: {_shown(existing)} is not writable"
        errors.append(f"workdir: {_shown(path)} {target} ({err.strerror})")
    if errors:
        raise SpecError(errors, "workdir")


def _exists(path: Path) -> bool:
    """Path.exists(), also False below a file (ENOTDIR) and for a name too long to look up."""
    try:
        return path.exists()
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            return False
        raise


def _shown(path: Path) -> str:
    return shown(str(path), chars=_PATH_CHARS)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        return 255


def _check_object_store(workdir: str) -> None:
    store = open_store(workdir)
    probe = f".impsweep-probe-{uuid.uuid4().hex}"
    try:
        store.write_bytes(probe, b"")
        store.delete(probe)
    except Exception as err:  # botocore's errors (no bucket, credentials, endpoint) and OSError
        raise SpecError([f"workdir: {workdir} cannot be written ({type(err).__name__}: {shown(str(err))}); "
                         "check the bucket and the AWS_* environment (credentials, AWS_ENDPOINT_URL)"],
                        "workdir") from None
