"""Recipe settings: a typed dataclass filled from a YAML/JSON file, then from ``--key value`` overrides.

Unknown keys are errors (a misspelt ``learning_rat`` must not silently train with the default), and values are
converted to the field's declared type with a message that names the key, the source and the expected type.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bertforge.errors import BertforgeError

ConfigT = TypeVar("ConfigT")


BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def bundled_config(name: str) -> Path:
    """The path of a config file shipped with bertforge (``pretrain-cpu`` → ``.../configs/pretrain-cpu.yaml``)."""
    return BUNDLED_CONFIGS / f"{name}.yaml"


def load_recipe_config(cls: type[ConfigT], path: str | Path | None, overrides: Sequence[str] = ()) -> ConfigT:
    """Build ``cls`` from defaults, then the file at ``path`` (if any), then ``overrides`` (``--key value``).

    ``path`` may also name a bundled config (``pretrain-cpu``, see ``src/bertforge/configs``).
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(_config_path(str(path), Path()), cls))
    values.update(parse_overrides(overrides, cls))
    try:
        return cls(**values)
    except TypeError as error:  # a required field without a value
        raise BertforgeError(f"{cls.__name__}: {error}") from None


def peek_setting(key: str, path: str | Path | None, overrides: Sequence[str]) -> str | None:
    """One setting's raw value before the settings class is chosen (``distill`` picks it by the teacher's head):
    the last ``--key value`` / ``--key=value`` override, else the config file's (its bases included), else None."""
    flag = f"--{key.replace('_', '-')}"
    found = None
    for index, argument in enumerate(overrides):
        if argument == flag and index + 1 < len(overrides):
            found = overrides[index + 1]
        elif argument.startswith(flag + "="):
            found = argument.partition("=")[2]
    if found is not None or path is None:
        return found
    file, seen = _config_path(str(path), Path()), set()
    while file.is_file() and file.resolve() not in seen:  # a base that leads back is reported by the full read
        seen.add(file.resolve())
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            return None  # the full read reports it
        if not isinstance(data, dict):
            return None
        if key in data:
            return str(data[key])
        if not isinstance(data.get("base"), str):
            return None
        file = _config_path(data["base"], file.parent)
    return None


def _config_path(name: str, folder: Path) -> Path:
    """A config file by path (relative to ``folder``) or, where no such file exists, a bundled config's name."""
    path = folder / name
    if not path.exists() and bundled_config(name).is_file():
        return bundled_config(name)
    return path


def _read_file(path: Path, cls: type, reading: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings in ``path``; a ``base:`` key names a config (bundled, or a path relative to this file) whose
    settings come first and are overridden by this file's, so a variant states only what it changes."""
    if not path.is_file():
        raise BertforgeError(f"{path}: no such config file")
    if path.resolve() in reading:
        chain = " → ".join(str(p) for p in (*reading, path.resolve()))
        raise BertforgeError(f"{path}: its base configs lead back to it ({chain}); remove one of the base: keys")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BertforgeError(f"{path}: cannot be parsed ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BertforgeError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    fields = _fields(cls)
    result = {}
    if "base" in data:
        if not isinstance(data["base"], str):
            raise BertforgeError(f"{path}: base: expected a config name or path, got {data['base']!r}")
        result.update(_read_file(_config_path(data.pop("base"), path.parent), cls, (*reading, path.resolve())))
    for key, value in data.items():
        if key not in fields:
            raise BertforgeError(f"{path}: unknown setting {key!r}; known settings: {', '.join(sorted(fields))}")
        result[key] = _convert(value, fields[key], f"{path}: {key}")
    return result


def parse_overrides(arguments: Sequence[str], cls: type) -> dict[str, Any]:
    """``["--learning-rate", "1e-3", "--bf16"]`` → typed values; a flag without a value means true."""
    fields = _fields(cls)
    result: dict[str, Any] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--"):
            raise BertforgeError(f"unexpected argument {argument!r}; settings are given as --key value")
        key, _, inline = argument[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise BertforgeError(f"unknown setting --{key.replace('_', '-')}; see --help for the settings")
        if inline:
            raw, index = inline, index + 1
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
            raw, index = arguments[index + 1], index + 2
        else:
            raw, index = "true", index + 1
        result[key] = _convert(yaml.safe_load(raw) if raw else raw, fields[key], f"--{key.replace('_', '-')}")
    return result


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Check and coerce a YAML value to a field type: int, float, str, bool, Optional[...] and list[...]."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        inner = [a for a in arguments if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin in (list, tuple, Sequence):
        items = value if isinstance(value, list) else [value]
        return [_convert(item, arguments[0] if arguments else str, where) for item in items]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise BertforgeError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BertforgeError(f"{where}: expected a whole number, got {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise BertforgeError(f"{where}: expected a number, got {value!r}")
    if kind is str:
        return str(value)
    return value


def field_comments(source: str) -> dict[str, str]:
    """Each field's comment in a dataclass's source: the one beside it, else the comment lines just above it."""
    comments, above = {}, []
    for line in source.splitlines():
        if match := re.match(r"\s+#\s*(.*)$", line):
            above.append(match.group(1))
        elif match := re.match(r"\s+(\w+):[^#]*?(?:#\s*(.*))?$", line):
            comments[match.group(1)] = match.group(2) or " ".join(above)
            above = []
        else:
            above = []
    return comments


def describe_settings(cls: type) -> str:
    """One line per setting — name, default, and the comment beside its field — for a command's ``--help``.

    The class's own settings come first; those it inherits follow under a heading per base (the first line of the
    base's docstring), so that a recipe's task settings lead and the shared training-loop settings come after.
    """
    classes = [c for c in cls.__mro__ if dataclasses.is_dataclass(c)]  # cls first, then its bases
    comments: dict[str, str] = {}
    for c in reversed(classes):  # a subclass's comment replaces its base's, beside a field given another default
        comments.update(field_comments(inspect.getsource(c)))
    # A field belongs to the base that declared it first, where it keeps its place among the dataclass's fields
    owner = {f.name: next(c for c in reversed(classes) if f.name in inspect.get_annotations(c))
             for f in dataclasses.fields(cls)}  # fmt: skip
    lines = []
    for group in classes:
        if group is not cls and group in owner.values():
            lines.append((inspect.getdoc(group) or group.__name__).splitlines()[0].rstrip(".").lower() + ":")
        for f in dataclasses.fields(cls):
            if owner[f.name] is group:
                default = f.default if f.default is not dataclasses.MISSING else "(required)"
                lines.append(f"  --{f.name.replace('_', '-'):<28} {default!s:<14} {comments.get(f.name, '')}")
    return "\n".join(lines)
