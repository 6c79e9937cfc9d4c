"""What a config may do, enforced: it chooses classes from an allow-list and sets their arguments; it cannot call
functions, import other modules, or expand without bound.

A config is YAML from ``-c`` files, from files given as values (``--data data.yaml``) and from command-line values;
jsonargparse reads them all, so the bounds sit in its two entry points:

* every file it reads (:func:`read_config`, in place of ``jsonargparse.Path.read_text``): at most
  :data:`MAX_CONFIG_BYTES` (checked before reading), UTF-8 text without NUL bytes, and YAML that stays bounded;
* every YAML text it loads (:class:`BoundedYAMLError` from jsonargparse's loader): at most :data:`MAX_YAML_NODES`
  nodes once aliases are expanded, no recursive alias. A "billion laughs" document is refused while it is composed,
  before anything is built from it (PyYAML shares aliased nodes, so composing stays small; the expansion would
  happen later, in jsonargparse's checks and error messages).

Import paths a value may name: :data:`ALLOWED_MODULES` (plus ``VITLAB_ALLOWED_CLASSES``, for a user's own callbacks),
never :data:`DENIED`. jsonargparse's import-path policy refuses the rest before importing them; after parsing,
:func:`check_config` refuses any value that is a function and checks every ``class_path`` again.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
from collections.abc import Iterator
from typing import Any, Optional

import yaml

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a resolved config.yaml is about 4 KB
MAX_YAML_NODES = 100_000  # after alias expansion; a resolved config.yaml has about 360
# lightning: its callbacks, loggers, strategies, plugins and profilers, and the short paths jsonargparse tries for
# them (lightning.Callback); torch.optim: optimizers and schedulers
ALLOWED_MODULES = ("vitlab", "lightning", "torch.optim")
DENIED = ("lightning.pytorch.callbacks.LambdaCallback", "lightning.pytorch.callbacks.lambda_function")
ALLOW_ENV = "VITLAB_ALLOWED_CLASSES"  # comma-separated modules or classes a config may also name
ALLOWED_HINT = (f"a config may name classes of {', '.join(ALLOWED_MODULES)} only (not LambdaCallback) and no "
                f"functions; allow your own module with {ALLOW_ENV}=module[,module]")


class ConfigError(ValueError):
    """A config file or value that vitlab refuses to read or use (one line, naming it)."""


class BoundedYAMLError(yaml.YAMLError):
    """YAML that expands beyond :data:`MAX_YAML_NODES` nodes or through a recursive alias (a YAMLError, so
    jsonargparse treats it as a value that does not load)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_expansion(root: yaml.Node, limit: int = MAX_YAML_NODES) -> int:
    """The number of nodes of ``root`` once its aliases are expanded; :class:`BoundedYAMLError` beyond ``limit`` or
    on a recursive alias. Linear in the composed (shared) graph: each node's expanded size is computed once."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth-first: a node still in progress when met again is its own ancestor
        node, done = stack.pop()
        key = id(node)
        if done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise BoundedYAMLError(f"YAML aliases expand to more than {limit:,} nodes (line "
                                       f"{node.start_mark.line + 1}); refused without expanding them")
            continue
        if key in sizes:
            continue
        if key in in_progress:
            raise BoundedYAMLError(f"recursive YAML alias at line {node.start_mark.line + 1}")
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _bounded_loader(base: type) -> type:
    """``base`` (a PyYAML loader class) that checks each document with :func:`check_expansion` once composed."""

    class BoundedLoader(base):
        def get_single_node(self) -> Optional[yaml.Node]:
            node = super().get_single_node()
            if node is not None:
                check_expansion(node)
            return node

    return BoundedLoader


_CHECK_LOADER = _bounded_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def check_text(text: str, name: str) -> str:
    """``text`` of config ``name`` if it is within the bounds, else :class:`ConfigError` naming it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is {size:,} bytes; a config may be at most {MAX_CONFIG_BYTES:,} bytes "
                          f"(1 MiB)")
    if "\0" in text:
        raise ConfigError(f"config file {name} is binary (it holds NUL bytes), not a YAML config")
    try:
        yaml.compose(text, Loader=_CHECK_LOADER)
    except BoundedYAMLError as e:
        raise ConfigError(f"config file {name}: {e}") from None
    except yaml.YAMLError:
        pass  # a syntax error: jsonargparse reports it, with its context
    return text


def read_config(path: str, name: Optional[str] = None) -> str:
    """The text of config file ``path`` (shown as ``name``): its size is checked before it is read, then it must be
    UTF-8 without NUL bytes and bounded YAML (:func:`check_text`)."""
    name = name or path
    size = os.stat(path).st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is {size:,} bytes; a config may be at most {MAX_CONFIG_BYTES:,} bytes "
                          f"(1 MiB)")
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)  # a device or a growing file stops here
    if b"\0" in data:
        raise ConfigError(f"config file {name} is binary (it holds NUL bytes), not a YAML config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte {e.start}), not a YAML config") from None
    return check_text(text, name)


def allowed_modules() -> tuple[str, ...]:
    """:data:`ALLOWED_MODULES` and the entries of ``VITLAB_ALLOWED_CLASSES``."""
    extra = [m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()]
    bad = [m for m in extra if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise ConfigError(f"{ALLOW_ENV}: {bad[0]!r} is not a module or class import path (e.g. my_pkg.callbacks)")
    return ALLOWED_MODULES + tuple(extra)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def is_allowed(import_path: str) -> bool:
    """Whether a config may name ``import_path`` (a class, as ``module.Class``)."""
    return not _under(import_path, DENIED) and _under(import_path, allowed_modules())


def install() -> None:
    """Put the bounds and the allow-list into jsonargparse for this process (idempotent)."""
    import jsonargparse
    from jsonargparse import _loaders_dumpers  # its YAML loader class; no public setter for it

    original = jsonargparse.Path.read_text
    if not getattr(original, "_vitlab_bounded", False):
        def read_text(self: jsonargparse.Path) -> str:
            if not (self.is_url or self.is_fsspec) and os.path.isfile(self.absolute):
                return read_config(self.absolute, str(self))
            return check_text(original(self), str(self))

        read_text._vitlab_bounded = True  # type: ignore[attr-defined]
        jsonargparse.Path.read_text = read_text
    base = _loaders_dumpers.get_yaml_default_loader()
    if not getattr(base, "_vitlab_bounded", False):
        bounded = _bounded_loader(base)
        bounded._vitlab_bounded = True
        _loaders_dumpers.yaml_default_loader = bounded
    try:
        jsonargparse.set_parsing_settings(import_path_denylist=["*", *DENIED],
                                          import_path_allowlist=list(allowed_modules()))
    except TypeError:  # a jsonargparse without the import-path policy: check_config still refuses after parsing
        pass
    except ValueError as e:  # an entry of VITLAB_ALLOWED_CLASSES jsonargparse will not allow
        raise ConfigError(f"{ALLOW_ENV}: {e}") from None


def _items(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every value in a parsed config, containers included."""
    yield key, value
    if isinstance(value, (dict, argparse.Namespace)):
        for k, v in (value if isinstance(value, dict) else vars(value)).items():
            yield from _items(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            yield from _items(v, f"{key}[{i}]")


def _import_path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def check_config(config: Any) -> None:
    """Refuse a parsed config (:class:`ConfigError` naming the key and the value) where a ``class_path`` or a class
    is not allowed, or a value is a function (LambdaCallback's hooks, a strategy's comm hook, ...)."""
    for key, value in _items(config, ""):
        if key.endswith("class_path") and isinstance(value, str) and "." in value and not is_allowed(value):
            raise ConfigError(f"{key}: {value} is not allowed in a config: {ALLOWED_HINT}")
        if inspect.isclass(value) and not is_allowed(_import_path(value)):
            raise ConfigError(f"{key}: {_import_path(value)} is not allowed in a config: {ALLOWED_HINT}")
        if inspect.isroutine(value) or type(value).__name__ == "partial":
            raise ConfigError(f"{key}: {_import_path(getattr(value, 'func', value))} is a function: {ALLOWED_HINT}")


def denied_import_message(message: str) -> Optional[str]:
    """jsonargparse's multi-line import-path refusal (or a nested one already rewritten by this function) as one
    line naming the key and the path; None for any other message."""
    denied = re.search(r"Importing '([\w.]+)' is not allowed|([\w.]+) is not allowed in a config", message)
    if denied is None:
        return None
    path = denied.group(1) or denied.group(2)
    keys = re.findall(r'Parser key "([^"]+)"', message)[:1]
    line = next(line.strip() for line in message.splitlines() if denied.group(0) in line)
    inner = re.match(r"([\w.\[\]]+): ", line)  # the argument of the class, e.g. batch_size_fn
    if inner and inner.group(1) not in (path, *keys) and not line.startswith("Type "):
        keys.append(inner.group(1))
    return f"{''.join(k + ': ' for k in keys)}{path} is not allowed in a config: {ALLOWED_HINT}"


__all__ = ["ALLOWED_MODULES", "ConfigError", "MAX_CONFIG_BYTES", "MAX_YAML_NODES", "check_config", "check_text",
           "denied_import_message", "install", "is_allowed", "read_config"]
