"""The one scan of class-folder trees (``root/<class>/**/<image>``) that every image-folder reader uses: the
data modules, ``vitlab prepare``.

torchvision's ``make_dataset`` walks with ``followlinks=True``, so a link back up the tree (``cat/loop -> ..``) is
read again and again until the path gets too long: images silently counted many times, some under the wrong
class. Here links are followed with rules a user can predict:

* a symlinked *file* is read, under the class folder the link is in (datasets built of links work);
* a symlinked *folder* (a class folder or a folder inside one) is followed when it points outside ``root``;
* a folder link that leads back to a folder it is in (a loop), that points into ``root`` or that reaches a folder
  already read through another link is a :class:`SymlinkError` naming the link and where it points: following
  it would read the same images twice.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator


class SymlinkError(ValueError):
    """A folder link in a data folder that would make images be read twice (a loop or an overlap)."""


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _describe(link: str, real: str) -> str:
    """``link -> target`` as written, with the resolved folder when it differs (``cat/loop -> .. (/d/train)``)."""
    written = os.readlink(link)
    return f"{link} -> {written}" + (f" ({real})" if os.path.normpath(written) != real else "")


def _check_link(link: str, real: str, chain: tuple[str, ...], root: str, visited: set[str]) -> None:
    """Refuse folder link ``link`` (resolving to ``real``) if following it would read a folder twice.

    Args:
        chain: Real paths of the folders the walk went through to reach the link, ``root`` first.
        root: Real path of the scanned tree.
        visited: Real paths of every folder read so far in this tree.
    """
    if any(_inside(c, real) for c in chain):
        raise SymlinkError(f"symlink loop: {_describe(link, real)} leads back to a folder it is in; remove the link "
                           f"(its images would be read again and again)")
    if _inside(real, root):
        raise SymlinkError(f"symlink {_describe(link, real)} points into {root}, which is read anyway: its images "
                           f"would be read twice; remove the link")
    overlaps = [v for v in visited if _inside(real, v) or _inside(v, real)]
    if overlaps:
        overlap = min(overlaps)
        raise SymlinkError(f"symlink {_describe(link, real)} reaches {overlap}, already read through another link: "
                           f"its images would be read twice; remove one of the links")


def _walk(top: str, root: str, visited: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` for ``top`` and every folder below it, following folder links by the module's
    rules; like ``os.walk`` (unsorted), files are every entry that is not a folder (broken links included)."""
    real = os.path.realpath(top)
    if os.path.islink(top):
        _check_link(top, real, (root,), root, visited)
    visited.add(real)
    stack = [(top, (root, real))]
    while stack:
        folder, chain = stack.pop()
        files = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.is_dir():  # follows links: a link to a file is a file
                    files.append(entry.name)
                    continue
                sub = os.path.realpath(entry.path)
                if entry.is_symlink():
                    _check_link(entry.path, sub, chain, root, visited)
                visited.add(sub)
                stack.append((entry.path, chain + (sub,)))
        yield folder, files


def scan_class_folders(root: str, class_to_idx: dict[str, int],
                       is_valid_file: Callable[[str], bool]) -> list[tuple[str, int]]:
    """``(path, class index)`` of every valid file under ``root/<class>/`` (recursively), in torchvision's order
    (classes sorted, then folders, then file names); the drop-in for ``DatasetFolder.make_dataset``.

    Raises:
        SymlinkError: A folder link that loops or would make images be read twice (see the module docstring).
        FileNotFoundError: Some class has no valid file (as torchvision).
    """
    real_root = os.path.realpath(root)
    visited: set[str] = {real_root}
    samples: list[tuple[str, int]] = []
    empty = []
    for name in sorted(class_to_idx):
        top = os.path.join(root, name)
        found = []
        if os.path.isdir(top):
            for folder, files in sorted(_walk(top, real_root, visited)):
                found += [(path, class_to_idx[name]) for f in sorted(files)
                          if is_valid_file(path := os.path.join(folder, f))]
        if not found:
            empty.append(name)
        samples += found
    if empty:
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}.")
    return samples


def has_images(folder: str, is_valid_file: Callable[[str], bool]) -> bool:
    """Whether ``folder`` (a class folder) holds a valid file, links followed as :func:`scan_class_folders` does."""
    root = os.path.realpath(os.path.dirname(os.path.abspath(folder)))
    return os.path.isdir(folder) and any(is_valid_file(os.path.join(d, f))
                                         for d, files in _walk(folder, root, {root}) for f in files)


__all__ = ["SymlinkError", "has_images", "scan_class_folders"]
