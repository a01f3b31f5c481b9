"""Write-then-rename: outputs appear under their final name only once they are complete.

Each output is written under a hidden temporary name in the destination's own directory (so the
final rename stays on one file system, where ``os.replace`` is atomic) and renamed into place by
``commit()``. ``discard()``, an exception in a writer's ``with`` block, garbage collection of a
forgotten writer, or interpreter exit remove the temporary instead; a file that already had the
final name is only ever replaced by a complete one.

>>> import tempfile, pathlib
>>> final = pathlib.Path(tempfile.mkdtemp()) / "out.json"
>>> pending = PendingFile(final)
>>> _ = pending.temp_path.write_text("{}")
>>> final.exists()
False
>>> pending.commit()
>>> final.read_text(), pending.temp_path.exists()
('{}', False)
"""

from __future__ import annotations

import os
import shutil
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from vidseg.errors import OutputError

_Writer = TypeVar("_Writer", bound="StreamingWriter")


def _temporary_sibling(final_path: Path, tag: str) -> Path:
    # Hidden and unique, so neither listings nor parallel writers trip over it.
    return final_path.with_name(f".{final_path.name}.{uuid.uuid4().hex[:12]}.{tag}")


def _make_parent(final_path: Path) -> None:
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the folder '{final_path.parent}' for '{final_path.name}': "
            f"{exc.strerror}; choose a location you can write to"
        ) from exc


def _remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class PendingFile:
    """A temporary file beside ``final_path`` that replaces it on :meth:`commit`.

    The temporary file is created empty at once (proving the location is writable before any
    work is done); write to :attr:`temp_path`.
    """

    def __init__(self, final_path: str | Path) -> None:
        self.final_path = Path(final_path)
        if self.final_path.is_dir():
            raise OutputError(
                f"cannot write '{self.final_path}': it is a folder; give a file name instead"
            )
        _make_parent(self.final_path)
        self.temp_path = _temporary_sibling(self.final_path, "tmp")
        try:
            # Created with open() rather than tempfile so that it gets the usual permissions
            # (tempfile's are owner-only, and would carry over to the final file).
            with open(self.temp_path, "xb"):
                pass
        except OSError as exc:
            raise OutputError(
                f"cannot write '{self.final_path}': {exc.strerror}; choose a location you "
                "can write to"
            ) from exc
        self._cleanup = weakref.finalize(self, _remove_file, self.temp_path)

    @property
    def pending(self) -> bool:
        """Whether neither :meth:`commit` nor :meth:`discard` has run yet."""
        return self._cleanup.alive

    def commit(self) -> None:
        """Rename the temporary file to the final name, replacing any file there."""
        os.replace(self.temp_path, self.final_path)
        self._cleanup.detach()

    def discard(self) -> None:
        """Remove the temporary file; the final name is left as it was."""
        self._cleanup()


class PendingDirectory:
    """A temporary directory beside ``final_path`` that takes its place on :meth:`commit`.

    ``final_path`` may already exist if it is empty or holds only ``.png`` files (a previous
    run's masks): it is then replaced as a whole on commit. Anything else there raises
    :class:`~vidseg.errors.OutputError` now, before any work is done.
    """

    def __init__(self, final_path: str | Path) -> None:
        self.final_path = Path(final_path)
        check_replaceable_mask_dir(self.final_path)
        _make_parent(self.final_path)
        self.temp_path = _temporary_sibling(self.final_path, "tmp")
        try:
            self.temp_path.mkdir()
        except OSError as exc:
            raise OutputError(
                f"cannot write into '{self.final_path.parent}': {exc.strerror}; choose a "
                "location you can write to"
            ) from exc
        self._cleanup = weakref.finalize(self, _remove_tree, self.temp_path)

    @property
    def pending(self) -> bool:
        """Whether neither :meth:`commit` nor :meth:`discard` has run yet."""
        return self._cleanup.alive

    def commit(self) -> None:
        """Put the temporary directory in place of ``final_path``."""
        if not self.final_path.exists():
            os.rename(self.temp_path, self.final_path)
            self._cleanup.detach()
            return
        # Directories cannot be swapped in one step: move the old one aside, move the new one
        # in, and only then delete the old one, so that a failure never loses both.
        check_replaceable_mask_dir(self.final_path)  # it may have changed while we worked
        old = _temporary_sibling(self.final_path, "old")
        os.rename(self.final_path, old)
        try:
            os.rename(self.temp_path, self.final_path)
        except BaseException:
            os.rename(old, self.final_path)
            raise
        self._cleanup.detach()
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the temporary directory; ``final_path`` is left as it was."""
        self._cleanup()


def check_replaceable_mask_dir(path: Path) -> None:
    """Raise :class:`OutputError` unless ``path`` is absent, empty, or holds only .png files."""
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(
            f"cannot write masks to '{path}': it is a file; choose an empty or new folder"
        )
    foreign = [
        entry.name
        for entry in path.iterdir()
        if not (entry.is_file() and entry.suffix.lower() == ".png")
    ]
    if foreign:
        examples = ", ".join(repr(name) for name in sorted(foreign)[:3])
        raise OutputError(
            f"cannot write masks to '{path}': it holds files other than masks ({examples}) "
            "that writing there would delete; choose an empty or new folder"
        )


class StreamingWriter:
    """Base of the writers: ``with`` support and the close/abort life cycle.

    Subclasses implement :meth:`_finish` (complete the output and commit it) and
    :meth:`_abandon` (drop everything written so far).
    """

    _closed: bool = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed; open a new writer")

    def close(self) -> None:
        """Finish the output and move it to its final name. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise

    def abort(self) -> None:
        """Discard everything written; nothing appears under the final name."""
        if not self._closed:
            self._closed = True
            self._abandon()

    def _finish(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
