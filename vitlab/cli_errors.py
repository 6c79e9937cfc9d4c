"""One-line errors for the ``vitlab`` command: jsonargparse's multi-line messages reduced to the key and the value,
old flat model keys answered with their new place, and the errors met while a run goes (a corrupt image, a full
disk) as one line with an exit code."""
from __future__ import annotations

import errno
import os
import re
import sys
from types import CodeType
from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser

from vitlab.data.base import ImageDataModule
from vitlab.data.image_io import ImageDecodeError
from vitlab.config_guard import denied_import_message
from vitlab.models.config import RENAMED_FIELDS
from vitlab.training.checkpointing import CheckpointWriteError
from vitlab.training.settings import MOVED, moved_message


class Parser(LightningArgumentParser):
    """On a bad argument, one usage line (not the hundred-line usage of every option) before jsonargparse's
    ``error: ...`` line; ``--help`` is unchanged."""

    def print_usage(self, file: Any = None) -> None:
        prog = self.prog.replace(" [options]", "")
        (file or sys.stderr).write(f"usage: {prog} [-h] [-c CONFIG ...] [--KEY VALUE ...]\n")

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        super().error(one_line_error(message), ex)


def one_line_error(message: str) -> str:
    """jsonargparse's multi-line error as one line naming the key and the value: a union (``Optional[int]``, a
    data-module class) lists every member's complaint; keep the ones that are not "expected None"."""
    denied = denied_import_message(message)  # an import path outside vitlab.config_guard's allow-list
    if denied is not None:
        return denied
    moved = re.search(r"unrecognized arguments: --model\.(\w+)|does not accept option '(?:model\.)?(\w+)'", message)
    key = (moved.group(1) or moved.group(2)) if moved else None
    if key in MOVED or key in RENAMED_FIELDS:
        return moved_message(key)
    link = re.match(r"argument (\S+) --> (\S+):", message)
    if link:  # a value for a linked key, e.g. model.arch.num_classes
        return (f"{link.group(2)} is set from {link.group(1)} (the data decides it): leave {link.group(2)} out "
                f"and set {link.group(1).split('.')[0]} options instead")
    if message.startswith("Unexpected config:"):  # jsonargparse's words for an empty or non-mapping -c file
        got = message.split(":", 1)[1].strip()
        return (f"a config file (-c) is empty or is not a mapping of keys to values"
                f"{f' (it holds {got[:80]})' if got else ''}")
    if "Does not validate against any of the Union subtypes" not in message:
        return " ".join(line.strip() for line in message.splitlines() if line.strip())
    lines = [line.strip() for line in message.splitlines()]
    top = re.match(r'Parser key "([^"]+)"', lines[0])
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    errors: list[list[str]] = []
    inside = False
    for line in lines:
        if line == "Errors:":
            inside = True
        elif line.startswith("Given value"):
            inside = False
        elif inside and line.startswith("- "):
            errors.append([line[2:]])
        elif inside and errors and line:
            errors[-1].append(line)
    parts = []
    for error in errors:
        if "NoneType" in error[0]:
            continue
        text = " ".join(e for e in error if not e.startswith("Problem with given class_path"))
        inner = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if inner and top:
            text = f"{top.group(1)}.{inner.group(1)}: {inner.group(2)}"
        elif top:
            text = f"{top.group(1)}: {text}"
        parts.append(text)
    result = "; ".join(parts) or " ".join(lines)
    if given is not None and len(given) < 80 and "Got value" not in result and " got " not in result:
        result += f" (got {given})"
    return result


# the write was refused for the path the user chose (exit 2), or the machine ran out of room (exit 1)
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
_ROOM_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}


def run_error(err: BaseException) -> Optional[tuple[int, str]]:
    """The exit code and one line for an error met while a command runs that is the input's or the machine's
    doing, not a bug; None for anything else (it keeps its traceback).

    * an image file that cannot be decoded, also when a loader worker re-raises it (its message is then the
      worker's traceback): 2, the file named;
    * a data tree or file that does not fit, raised (``OSError``, ``ValueError``) by a data module's ``setup``
      (:meth:`ImageDataModule.setup`): 2;
    * a file that cannot be written: 2 for a read-only or wrong path, 1 for a full disk, a file-size limit or an
      I/O error; the path and the errno named.
    """
    if isinstance(err, ImageDecodeError):
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return 2, lines[-1].split("ImageDecodeError: ", 1)[-1] if lines else str(err)
    if isinstance(err, (OSError, ValueError)) and _raised_in(err, ImageDataModule.setup.__code__):
        return 2, " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.errno in _PATH_ERRNOS | _ROOM_ERRNOS:
        code = 2 if err.errno in _PATH_ERRNOS else 1
        reason = f"{os.strerror(err.errno)} ({errno.errorcode[err.errno]})"
        if isinstance(err, CheckpointWriteError):
            return code, (f"cannot write checkpoint {err.filename}: {reason}; a checkpoint already at that path is "
                          f"untouched")
        return code, f"{err.filename}: {reason}" if err.filename else reason
    return None


def _raised_in(err: BaseException, code: CodeType) -> bool:
    """Whether ``code`` (a function's ``__code__``) is on the traceback of ``err``."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


__all__ = ["Parser", "one_line_error", "run_error"]
