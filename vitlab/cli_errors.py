"""One-line errors for the ``vitlab`` command: jsonargparse's multi-line messages reduced to the key and the value,
old flat model keys answered with their new place."""
from __future__ import annotations

import re
import sys
from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser

from vitlab.models.config import RENAMED_FIELDS
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
    moved = re.search(r"unrecognized arguments: --model\.(\w+)|does not accept option '(?:model\.)?(\w+)'", message)
    key = (moved.group(1) or moved.group(2)) if moved else None
    if key in MOVED or key in RENAMED_FIELDS:
        return moved_message(key)
    link = re.match(r"argument (\S+) --> (\S+):", message)
    if link:  # a value for a linked key, e.g. model.arch.num_classes
        return (f"{link.group(2)} is set from {link.group(1)} (the data decides it): leave {link.group(2)} out "
                f"and set {link.group(1).split('.')[0]} options instead")
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


__all__ = ["Parser", "one_line_error"]
