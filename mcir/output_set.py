"""Publishing a compile's files as one set: a reader sees the old set or the new set, never a mix.

``mcir compile ... -o build/mlp`` writes ``mlp.o``, ``mlp.so`` and ``mlp.h``. A C program built from
an ``mlp.h`` of one compile against an ``mlp.so`` of another corrupts memory, so the three must change
together. Renaming three files cannot be one atomic step, but renaming one symbolic link can:

::

    build/mlp.so -> .mlp.current/mlp.so          stable links, created once
    build/mlp.h  -> .mlp.current/mlp.h
    build/mlp.o  -> .mlp.current/mlp.o
    build/.mlp.current -> .mlp.versions/<id>     switched by one rename(2): the commit point
    build/.mlp.versions/<id>/mlp.{o,so,h}        each compile writes a new, complete folder

The guarantee, precisely: at every instant, opening ``build/mlp.so``, ``mlp.h`` and ``mlp.o`` resolves
through the one ``.mlp.current`` link, so the files a reader opens *at one instant* belong to one
complete compile; a compile killed at any point leaves the previous set in place (plus an unused
folder under ``.mlp.versions`` that the next compile removes). A reader that opens the files at
different times may straddle a switch: resolve ``build/.mlp.current`` once (``os.path.realpath``)
and read the files from that folder to be sure. The previous version is kept until the next compile
so that such a reader does not lose its folder mid-read; older ones are removed. One writer at a time
per output path: two compiles racing to the same path each publish a complete set, the last wins.

Two situations get a weaker, per-file guarantee (each file is replaced atomically, the set is not):
the first compile into a path that holds plain files from an older mcir (they are replaced by links
one by one), and file systems without symbolic links (files are then copied in and renamed one by one).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUFFIXES = (".o", ".so", ".h", ".ll")


def current_link(stem: Path) -> Path:
    """The link whose switch publishes a new set: ``build/.mlp.current`` for the stem ``build/mlp``."""
    return stem.with_name(f".{stem.name}.current")


def versions_dir(stem: Path) -> Path:
    return stem.with_name(f".{stem.name}.versions")


@contextmanager
def publishing(stem: str | Path) -> Iterator[Path]:
    """Write a compile's files into the yielded folder (named ``<stem name><suffix>``); on normal exit
    they become the set at ``stem`` in one step; on an exception the folder is removed and the previous
    set stays."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    folder = versions_dir(stem) / f"{time.time_ns():x}-{os.getpid()}"
    folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _fsync_tree(folder)
    publish(stem, folder)


def publish(stem: Path, folder: Path) -> None:
    """Make the complete ``folder`` the set at ``stem``: switch the current link, then fix the stable links."""
    names = {p.name for p in folder.iterdir()}
    current = current_link(stem)
    try:
        _replace_with_link(current, os.path.relpath(folder, stem.parent))
    except OSError:  # no symbolic links here: per-file atomic copies, the weaker guarantee
        _publish_by_copy(stem, folder, names)
        return
    for suffix in SUFFIXES:
        name = stem.name + suffix
        target = stem.with_name(name)
        if name in names:
            link = f"{current.name}/{name}"
            if not (target.is_symlink() and os.readlink(target) == link):
                _replace_with_link(target, link)
        elif target.is_symlink() and os.readlink(target).startswith(f"{current.name}/"):
            target.unlink()  # the new set has no such file (a cross compile has no .so): no dangling link
    _remove_old_versions(stem, keep={folder.name, _previous(stem, folder)})


def _replace_with_link(path: Path, target: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{time.time_ns():x}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _previous(stem: Path, folder: Path) -> str:
    """The newest version older than ``folder`` (kept one more round for readers that resolved it)."""
    mine = _version_key(folder.name)
    older = sorted((p.name for p in versions_dir(stem).iterdir() if _version_key(p.name) < mine), key=_version_key)
    return older[-1] if older else ""


def _version_key(name: str) -> int:
    try:
        return int(name.split("-", 1)[0], 16)
    except ValueError:
        return -1


def _remove_old_versions(stem: Path, keep: set[str]) -> None:
    for p in versions_dir(stem).iterdir():
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _publish_by_copy(stem: Path, folder: Path, names: set[str]) -> None:
    for name in sorted(names):
        tmp = stem.with_name(f".{name}.{os.getpid()}.tmp")
        shutil.copy2(folder / name, tmp)
        os.replace(tmp, stem.with_name(name))
    shutil.rmtree(versions_dir(stem), ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush the new files and the folder before the switch, so a crash cannot publish empty files."""
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
