"""Listing the image files of a folder tree, symbolic links included, each real file once.

Image folders are often made of symbolic links (a class folder linked to a
shared store, a subset of ImageNet linked file by file), so links are
followed. What a link means is decided here, once, for ``image_folder``:

- A link stands for the file or folder it points to and takes the label of
  the place where the link is (the class folder that holds it).
- A link that points outside ``root`` (a shared store) is followed.
- A link to a folder that holds the link (``self -> .``, ``up -> ..``,
  ``all -> /``) is a loop and is not followed.
- A link that points back into ``root`` but outside the folder being listed
  (its class folder, or ``root`` itself when unlabelled), or into another
  class folder wherever that is, is not followed: it would give another
  class's images this class's label.
- A folder reached a second time (two links to one folder) is listed once;
  so is a file, by its real path: the path found first (folders are listed
  depth first, in name order) is used.
- A link to nothing (dangling) is left out, and so is a folder that cannot
  be listed (no permission).

Everything left out, second paths to a file included, is returned with its
reason so that the caller can warn and write it to the run directory's
``skipped_images.txt``. The walk never enters a folder twice, so no link
structure makes it loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from jef.data.base import IMAGE_EXTENSIONS

__all__ = ["Walk", "is_image_name"]


def is_image_name(name: str) -> bool:
    """A file name jef lists as an image: an image extension and not hidden."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@attrs.define
class Walk:
    """One listing of a folder tree (``root`` and its class folders): what it has seen and left out.

    Attributes:
        root: The real path of the tree's top folder.
        left_out: ``{path: reason}`` of the links not followed, the second paths to a file and the folders
            that cannot be listed.
    """

    root: str
    left_out: dict[str, str] = attrs.field(factory=dict)
    _owned: list[str] = attrs.field(factory=list)  # real paths of root and of the class folders
    _dirs: set[str] = attrs.field(factory=set)  # real paths of the folders entered
    _files: dict[str, str] = attrs.field(factory=dict)  # real path -> the path it is listed under

    @classmethod
    def of(cls, root: Path) -> Walk:
        """A walk of the tree under ``root``; ``root`` itself counts as entered."""
        walk = cls(os.path.realpath(root))
        walk._owned.append(walk.root)
        walk._dirs.add(walk.root)
        return walk

    def follow(self, link: Path, parent: str, region: str) -> str | None:
        """The real target of ``link`` if a listing of ``region`` follows it, else None (the reason is kept).

        Args:
            link: The symbolic link.
            parent: The real path of the folder that holds it.
            region: The real path of the folder being listed (a class folder, or ``root``).
        """
        target = os.path.realpath(link)
        if not os.path.exists(target):
            self.left_out[str(link)] = f"dangling symbolic link to {os.readlink(link)}"
            return None
        if os.path.isdir(target) and _inside(parent, target):
            self.left_out[str(link)] = f"symbolic link to {target}, which holds the link (a loop): not followed"
            return None
        owner = next((folder for folder in reversed(self._owned) if _inside(target, folder)), None)
        if owner is not None and not _inside(target, region):
            where = f"inside root but outside {region}" if owner == self.root else f"into class folder {owner}"
            self.left_out[str(link)] = (f"symbolic link to {target}, {where}: not followed (its images would be "
                                        "listed again, with another label)")
            return None
        return target

    def class_folder(self, folder: Path) -> str | None:
        """The real path of the class folder ``folder`` (directly under ``root``); None for a link into the tree.

        Call it for every class folder before listing any: a link in one class folder must not reach another's.
        """
        in_root = os.path.join(self.root, folder.name)
        real = self.follow(folder, self.root, in_root) if folder.is_symlink() else in_root
        if real is not None:
            self._owned.append(real)
        return real

    def images(self, top: Path, region: str | None = None, *, recursive: bool = True) -> list[Path]:
        """The image files under ``top`` (sorted, so that runs agree), each real file once.

        Args:
            top: The folder to list (``root``, or a class folder in it).
            region: The real path links may point into when they point into ``root`` (default: ``top``'s).
            recursive: List the subfolders too.
        """
        real_top = os.path.realpath(top)
        region = region if region is not None else real_top
        self._dirs.add(real_top)
        found: list[Path] = []
        pending = [(top, real_top)]
        while pending:
            folder, real_folder = pending.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as err:
                self.left_out[str(folder)] = f"cannot list the folder: {err.strerror or err}"
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):  # .git, .ipynb_checkpoints, editor files
                    continue
                path = Path(folder, entry.name)
                if entry.is_symlink():
                    target = self.follow(path, real_folder, region)
                    if target is None:
                        continue
                    is_dir, is_file = os.path.isdir(target), os.path.isfile(target)
                else:  # no system call per plain file: the folder's real path is known (ImageNet has 1.28M)
                    target = os.path.join(real_folder, entry.name)
                    is_dir, is_file = entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False)
                if is_dir:
                    if not recursive:
                        continue
                    if target in self._dirs:
                        self.left_out[str(path)] = (f"symbolic link to {target}, a folder already listed: "
                                                    "not followed")
                    else:
                        self._dirs.add(target)
                        subfolders.append((path, target))
                elif is_file and is_image_name(entry.name):
                    first = self._files.setdefault(target, str(path))
                    if first != str(path):
                        self.left_out[str(path)] = f"the same file as {first}, which is used (each file counts once)"
                    else:
                        found.append(path)
            pending += reversed(subfolders)  # depth first, in name order
        return sorted(found)
