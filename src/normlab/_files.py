r"""Writing files and folders so that an interrupted or failed write never leaves a partial one.

* :func:`write_atomic` (and :func:`write_bytes_atomic`, :func:`write_text_atomic`) write a file
  to a temporary name in its folder, flush it to disk and rename it over the target
  (``os.replace``): a reader sees the old complete file or the new complete one.
* :func:`replaced_folder` builds a whole folder (a report) in a fresh temporary sibling and swaps
  it in at the end (old folder renamed away, new one renamed in, old one deleted): the folder
  holds one run's files only, and a run that fails or is interrupted leaves the old folder as it
  was and no temporary files.
* :func:`file_group` writes several files that belong together (a table's markdown, CSVs and
  figures; a document and its figure folder): each is staged to a temporary name beside it and
  flushed, and only when all of them are written are they renamed to their names, one after the
  other; a failed or interrupted write leaves the old complete set and no temporary files.
* :func:`check_output_path` and :func:`check_replaceable_folder` refuse, before any work, a
  target that cannot be written, naming the path and the reason.

Temporary names start with ``.tmp-`` (files) or ``.<folder>.tmp-`` (folders).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (not ``mkstemp``'s
    owner-only ones); on any error (or interrupt) the temporary file is deleted."""
    path = Path(path)
    _check_parent(path)
    handle, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _check_parent(path: Path) -> None:
    """A missing folder named as such (mkstemp would name its temporary file instead)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "cannot write a file into a folder that does not exist", str(path.parent)
        )


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda stream: stream.write(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    write_atomic(path, lambda stream: stream.write(text.encode(encoding)))


def copy_file_atomic(source: str | Path, target: str | Path) -> None:
    with open(source, "rb") as stream:
        write_atomic(target, lambda out: shutil.copyfileobj(stream, out))


class FileGroup:
    """Files staged by :func:`file_group`: ``write(path, write)``, ``write_text(path, text)``.

    Each write goes to a temporary file beside its target (flushed to disk); :meth:`commit`
    renames every staged file to its target, :meth:`discard` deletes them."""

    def __init__(self) -> None:
        self.staged: dict[Path, Path] = {}

    def write(self, path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
        previous = self.staged.get(path)  # the same target twice: the last write wins
        self.staged[path] = Path(temp)  # registered first, so that discard() finds it
        if previous is not None:
            previous.unlink(missing_ok=True)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        return path

    def write_text(self, path: str | Path, text: str, encoding: str = "utf-8") -> Path:
        return self.write(path, lambda stream: stream.write(text.encode(encoding)))

    def commit(self) -> None:
        """Rename every staged file to its target. The old targets are kept (hard links) until
        all renames are done, so that a rename that fails half-way (a permission error, a full
        directory) is rolled back: the old complete set is restored, no staged file is left."""
        kept: dict[Path, Path | None] = {}
        done: list[Path] = []
        try:
            for path in self.staged:
                kept[path] = self._keep(path)
            for path, temp in self.staged.items():
                os.replace(temp, path)
                done.append(path)
        except BaseException:
            for path in reversed(done):  # roll back: the old file, or none where there was none
                old = kept.pop(path)
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    os.replace(old, path)
            for old in kept.values():
                if old is not None:
                    old.unlink(missing_ok=True)
            raise
        for old in kept.values():
            if old is not None:
                old.unlink(missing_ok=True)
        self.staged.clear()

    @staticmethod
    def _keep(path: Path) -> Path | None:
        """A hard link to the current ``path`` under a temporary name (None if there is none)."""
        if not path.exists():
            return None
        keep = path.with_name(f"{TEMP_PREFIX}{path.name}.old-{os.getpid()}")
        keep.unlink(missing_ok=True)
        try:
            os.link(path, keep)
        except OSError:  # a file system without hard links: a copy
            shutil.copyfile(path, keep)
        return keep

    def discard(self) -> None:
        for temp in self.staged.values():
            temp.unlink(missing_ok=True)
        self.staged.clear()


@contextmanager
def file_group() -> Iterator[FileGroup]:
    """Stage files that belong together and rename them into place when the block completes::

        with file_group() as files:
            files.write_text(out / "table.md", markdown)
            files.write_text(out / "results.csv", rows)

    A reader (or a re-run) never sees the new table.md beside the old results.csv because the
    run failed (a full disk, an error, Ctrl-C) between them: until every file is written the
    old ones are untouched, and the renames, the only step left, take microseconds. On any
    error or interrupt the staged files are deleted."""
    group = FileGroup()
    try:
        yield group
        group.commit()
    except BaseException:
        group.discard()
        raise


# -- checks before any work ------------------------------------------------------------------


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def check_output_path(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a Path if a folder can be written there (it exists as a writable folder, or it
    can be created); else a ValueError naming ``flag``, the path and the reason. Nothing is
    created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"cannot write to {flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {flag} {path}: {existing} is not writable")
    return path


def _probe(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe.", dir=folder)
    os.close(handle)
    os.unlink(probe)


def _target(folder: Path) -> Path:
    """The folder a swap replaces: the link's target for a symbolic link, absolute."""
    return folder.resolve() if folder.is_symlink() else Path(os.path.abspath(folder))


def check_replaceable_folder(
    folder: str | Path, owned: Collection[str], flag: str = "--out", what: str = "report"
) -> Path:
    """Check, before any work, that :func:`replaced_folder` can replace ``folder``: it is not the
    current folder (or above it), not a file, holds nothing but the entries ``owned`` (the files
    a previous run wrote, so that no other file is deleted with it), and its parent is writable
    (created if need be). A ValueError naming ``flag``, the path and the reason otherwise."""
    folder = Path(folder)
    target = _target(folder)
    cwd = Path.cwd().resolve()
    if target.resolve() == cwd or target.resolve() in cwd.parents:
        raise ValueError(
            f"{flag} {folder} is the current folder or one above it; a new {what} replaces its "
            f"folder as a whole, so give a folder of its own, e.g. {flag} {folder / what}"
        )
    check_output_path(folder, flag)
    if target.is_dir():
        foreign = sorted(
            entry.name
            for entry in target.iterdir()
            if entry.name not in owned and not entry.name.startswith(TEMP_PREFIX)
        )
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ValueError(
                f"{flag} {folder} holds files that are not a normlab {what} ({shown}); a new "
                f"{what} replaces its folder as a whole, so choose a new folder (or one holding "
                f"only a {what})"
            )
    try:
        _probe(target.parent)
    except OSError as error:
        raise ValueError(
            f"cannot write to {flag} {folder}: its parent folder {target.parent} is not writable "
            f"({_reason(error)})"
        ) from None
    return folder


# -- whole folders ---------------------------------------------------------------------------


def _folder_temp_prefix(folder: Path) -> str:
    return f".{folder.name}{TEMP_PREFIX}"


@contextmanager
def replaced_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``folder`` to write into; when the block completes,
    swap it in as ``folder`` (the old ``folder`` renamed away, the new one renamed in, the old one
    deleted, as are the temporaries of earlier runs that were killed). When the block raises (or
    is interrupted) the temporary folder is deleted and ``folder`` is left as it was."""
    target = _target(Path(folder))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=_folder_temp_prefix(target), dir=target.parent))
    try:
        os.chmod(temp, 0o777 & ~_umask())
        yield temp
        _swap_in(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for stale in target.parent.glob(_folder_temp_prefix(target) + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = new.with_name(new.name + ".old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
