"""argparse arguments generated from option declarations (`hf_gqa.core.options.option`), and the merge of
defaults, a `--config` YAML file and the command line (which wins)."""

import argparse
from collections.abc import Iterable

from ..core.options import Option, load_yaml_options


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option], positional: tuple[str, ...] = ()) -> None:
    """One argument per option. Every default is None, so that `merge` can tell what the command line gave."""
    for o in options:
        if o.name in positional:
            parser.add_argument(o.name, nargs="?", metavar=o.metavar, help=o.help)
            continue
        names = [o.short, o.flag] if o.short else [o.flag]
        if o.type is bool:
            parser.add_argument(*names, dest=o.name, action="store_true", default=None, help=o.help)
            continue
        kwargs = dict(dest=o.name, help=o.help, choices=o.resolved_choices(), metavar=o.metavar)
        if o.type is list:
            kwargs.update(nargs="+")
        else:
            kwargs.update(type=o.type)
        parser.add_argument(*names, **kwargs)


def merge(args: argparse.Namespace, options: dict[str, Option], config: str | None) -> dict:
    """The declared defaults, then the `--config` YAML file's values, then the command line's."""
    values = {name: o.default for name, o in options.items()}
    if config:
        values.update(load_yaml_options(config, options))
    values.update({name: getattr(args, name) for name in options if getattr(args, name, None) is not None})
    return values


__all__ = ["add_options", "merge"]
