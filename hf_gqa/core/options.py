"""Options declared once, as dataclass fields, from which the CLI flags, the `--config` YAML keys, the recipe's
fields and the Python keywords are all generated.

    @dataclass(frozen=True)
    class WGQAOptions:
        weights: str | None = option(help="...", choices=WEIGHT_SHAPES, variants=("wgqa", "randwgqa"))

`option()` is `dataclasses.field()` with the option's help, CLI shape (flag, short flag, choices, metavar, nargs) and,
for a variant's option, the variants that take it. `declared(cls)` reads them back. `load_yaml_options` is the one
YAML reader of the package: keys with `-` or `_`, unknown keys refused, and every value checked against its declared
type (a YAML boolean for a flag, never the string "false").
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import HfGqaError

_META = "hf_gqa"


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option (see `option`)."""

    name: str
    help: str
    type: type  # int, float, str or bool; `list` for a list of strings
    default: Any = None
    short: str | None = None  # e.g. "-g"
    choices: tuple | Callable[[], Iterable[str]] | None = None  # a callable: resolved when the parser is built
    metavar: str | None = None
    variants: tuple[str, ...] = ()  # the variants that take it (empty: every variant)
    also: tuple[type, ...] = ()  # other types a YAML value may have (e.g. a mapping of attention kind -> groups)
    together: str | None = None  # options sharing this name are named together when refused for a variant

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def resolved_choices(self) -> tuple | None:
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def check(self, value: Any, where: str) -> Any:
        """`value` (from YAML or Python) as this option's type, or a one-line error."""
        if value is None:
            return None
        if isinstance(value, self.also):
            return value
        kind = self.type
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
            str: isinstance(value, str),
            list: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        }[kind]
        if not ok:
            wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
            raise HfGqaError(f"{where}: {self.name} must be {wanted[kind]}, got {value!r}")
        if kind is list and isinstance(value, str):
            value = [value]
        choices = self.resolved_choices()
        values = value if kind is list else [value]
        bad = [v for v in values if choices and v not in choices]
        if bad:
            raise HfGqaError(f"{where}: {self.name} must be one of {', '.join(map(str, choices))}, got {bad[0]!r}")
        return value


def option(
    default: Any = None,
    *,
    help: str,
    type: type,
    short: str | None = None,
    choices: tuple | Callable[[], Iterable[str]] | None = None,
    metavar: str | None = None,
    variants: tuple[str, ...] = (),
    also: tuple[type, ...] = (),
    together: str | None = None,
) -> Any:
    """A dataclass field that declares an option (see the module docstring)."""
    meta = dict(help=help, type=type, short=short, choices=choices, metavar=metavar, variants=variants, also=also)
    meta["together"] = together
    return dataclasses.field(default=default, metadata={_META: meta})


def declared(cls) -> list[Option]:
    """The options a dataclass declares with `option()`, in field order."""
    return [
        Option(name=f.name, default=f.default, **f.metadata[_META])
        for f in dataclasses.fields(cls)
        if _META in f.metadata
    ]


def load_yaml_mapping(path: str | Path, what: str = "--config") -> dict:
    """A YAML file's top-level mapping, keys with `-` turned into `_`; one-line errors for anything else."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise HfGqaError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise HfGqaError(f"{what} {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HfGqaError(f"{what} {str(path)!r} must be a mapping of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_yaml_options(
    path: str | Path, options: Mapping[str, Option], what: str = "--config", noun: str = "key", list_known: bool = True
) -> dict:
    """Read a YAML file of `options` (name -> `Option`): unknown keys and ill-typed values are one-line errors."""
    data = load_yaml_mapping(path, what)
    unknown = sorted(set(data) - set(options))
    if unknown:
        known = f"; known: {', '.join(options)}" if list_known else ""
        raise HfGqaError(f"{what} {str(path)!r}: unknown {noun} {unknown[0]!r}{known}")
    where = f"{what} {str(path)!r}"
    return {key: options[key].check(value, where) for key, value in data.items()}


__all__ = ["Option", "declared", "load_yaml_mapping", "load_yaml_options", "option"]
