"""Strict yaml configs: a yaml file only sets the fields of a dataclass; an unknown key is an error.

Each stage owns its own config dataclass (pipelines.config.PipelineConfig, model.config.ModelConfig,
...) with the original's values as defaults; `from_dict` fills one from a (nested) dict and
`load_yaml` reads a file. `to_dict` gives the resolved config back, to be saved beside outputs.
"""
import dataclasses
import typing
from pathlib import Path

import yaml

from core.errors import UserError


def load_yaml(path) -> dict:
    """Read a yaml mapping; a missing or unparsable file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid yaml ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from `data`; nested dataclass fields take nested mappings.

    Unknown keys and values of the wrong kind raise UserError with the key's dotted path
    (`where` names the file or section for the message).
    """
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def _convert(hint, value, where):
    """Check/convert one value against its type hint (dataclass, tuple, float, int, ...)."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else typing.Any
        return tuple(_convert(item, v, where) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(obj) -> dict:
    """The resolved config as plain python (tuples as lists), ready for yaml.safe_dump."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))
