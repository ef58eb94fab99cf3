"""Walking a folder tree that may hold symbolic links, loops included.

``os.walk(followlinks=True)`` and ``glob.glob("**", recursive=True)`` follow a link back to
a folder above it (``cat/loop -> ..``) until the kernel's 40-link limit: every image below
comes back 40 times under the wrong folder, and with two such links the walk has 2**40
routes and never ends. :func:`walk_files` follows links but enters each folder once, known
by its device and inode, and says which links it did not follow; :func:`glob_files` matches
a glob pattern on that walk.

Resources: the walk holds at most one directory open (its listing is read, sorted and
closed before anything below it is entered) and one entry per folder still to enter; no
threads.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = ["FileKey", "Link", "glob_files", "is_hidden_name", "walk_files"]

#: A file's identity, ``(device, inode)``: two paths with the same key are one file.
FileKey = tuple[int, int]


class Link(NamedTuple):
    """A folder the walk did not enter, and the folder (entered earlier) it leads to; both
    relative to the top, ``""`` for the top itself."""

    path: str
    target: str


def is_hidden_name(name: str) -> bool:
    """Hidden files and folders, and the ``__MACOSX`` folder of zips made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"


def walk_files(
    top: str,
    links: list[Link],
    *,
    folders: list[str] | None = None,
    enter: Callable[[str], bool] | None = None,
    identify: bool = False,
) -> Iterator[tuple[str, FileKey | None]]:
    """``(relative posix path, key)`` for every non-folder entry below ``top``, in
    ``os.walk``'s order (a folder's files sorted by name, then its sub-folders, sorted).

    Links are followed, but a folder is entered once: a link to a folder that was already
    reached (a loop to a folder above, or a second route) is appended to ``links`` and not
    followed. Sub-folders are entered when ``enter(relative path)`` says so (default: not
    hidden). ``folders`` receives every folder entered (``""`` for ``top``). ``key`` is the
    file's ``(device, inode)`` with ``identify`` (``None`` for a broken link), else ``None``.
    """
    enter = enter or (lambda rel: not is_hidden_name(rel.rsplit("/", 1)[-1]))
    st = os.stat(top)
    reached: dict[FileKey, str] = {(st.st_dev, st.st_ino): ""}
    stack: list[tuple[str, int]] = [("", st.st_dev)]
    while stack:
        rel, device = stack.pop()
        if folders is not None:
            folders.append(rel)
        try:
            with os.scandir(os.path.join(top, rel)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable folder, as os.walk without onerror
        below = []
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if not _is_dir(entry):
                yield path, (_file_key(entry, device) if identify else None)
            elif enter(path):
                below.append((path, entry))
        todo = []
        for path, entry in below:  # claimed in order, before any of them is entered
            key = _folder_key(entry)
            if key is None:
                continue
            if key in reached:
                links.append(Link(path, reached[key]))
            else:
                reached[key] = path
                todo.append((path, key[0]))
        stack.extend(reversed(todo))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_key(entry: os.DirEntry[str]) -> FileKey | None:
    try:
        st = entry.stat()  # follows the link: the folder it leads to
    except OSError:
        return None  # removed meanwhile
    return (st.st_dev, st.st_ino)


def _file_key(entry: os.DirEntry[str], device: int) -> FileKey | None:
    """The file an entry names; a plain file's inode comes with its listing (no call)."""
    try:
        if not entry.is_symlink():
            return (device, entry.inode())
        st = os.stat(entry.path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def glob_files(pattern: str, links: list[Link]) -> list[str]:
    """The files matching a glob pattern, sorted, as ``sorted(glob.glob(pattern,
    recursive=True))`` finds them (``*``, ``?`` and ``[...]`` within a name, ``**`` for any
    number of folders, hidden names only when the pattern names them), but on
    :func:`walk_files`, so that a link loop cannot make it endless or list a file twice.
    The links not followed are appended to ``links``, as paths like the matches."""
    parts = pattern.split("/")
    fixed = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else "")
    rest = _Pattern([p for p in parts[fixed:-1] if p] + parts[-1:])  # "a/*//b" is "a/*/b"
    if not os.path.isdir(base or "."):
        return []
    reached = {"": rest.start}  # folder -> the positions in the pattern it reaches

    def step(rel: str) -> frozenset[int]:
        folder, _, name = rel.rpartition("/")
        return rest.step(reached[folder], name)

    def enter(rel: str) -> bool:
        reached[rel] = step(rel)
        return any(s < rest.end for s in reached[rel])

    prefix = "" if not base else base if base.endswith("/") else base + "/"
    matches: list[str] = []
    found: list[Link] = []
    for rel, _ in walk_files(base or ".", found, enter=enter):
        if rest.end in step(rel) and os.path.isfile(prefix + rel):
            matches.append(prefix + rel)
    links.extend(Link(prefix + a, prefix + b if b else base or ".") for a, b in found)
    return sorted(matches)


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


class _Pattern:
    """The parts of a glob pattern as a small automaton over the names of a path: ``**``
    matches any number of names (none included), any other part one name; its states are
    positions in the parts, ``end`` when all are matched."""

    def __init__(self, parts: list[str]) -> None:
        self.parts, self.end = parts, len(parts)
        self.match = [re.compile(fnmatch.translate(p)).match for p in parts]
        self.start = self._closure({0})

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        after = set()
        for s in states:
            part = self.parts[s] if s < self.end else None
            if part is None or (name.startswith(".") and not part.startswith(".")):
                continue  # glob's rule: wildcards do not match hidden names
            if part == "**":
                after.add(s)
            elif self.match[s](name):
                after.add(s + 1)
        return self._closure(after)

    def _closure(self, states: set[int]) -> frozenset[int]:
        out, todo = set(states), list(states)
        while todo:
            s = todo.pop()
            if s < self.end and self.parts[s] == "**" and s + 1 not in out:
                out.add(s + 1)
                todo.append(s + 1)
        return frozenset(out)
