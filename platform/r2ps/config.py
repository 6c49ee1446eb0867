"""One configuration system for every job: dataclasses, loadable from YAML, overridable.

A job declares its settings as a dataclass. `parse_config` builds one from, in order
of precedence: command-line flags (`--out x`, generated from the fields), positional
`key=value` overrides (dotted keys reach nested dataclasses), a YAML file
(`--config file.yaml`), and the dataclass defaults. Values given as strings are parsed
as YAML scalars and then checked against the field's type, so `epochs=three` fails
with a message that names the field.

A job's settings also say which paths it will read (`inputs()`: a list of `Need`), and
`check_inputs` checks them all before the job does any work: a job that would fail on a
missing input an hour in fails at once instead, naming the setting and the path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from r2ps.storage import exists, is_uri

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that does not exist or has a value of the wrong type."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn `value` into type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin in (list, tuple):
        if isinstance(value, str) and value.lstrip().startswith("["):  # "[1, 8]": YAML
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(f"{where}: {value!r} is not a YAML list ({e})") from None
        elif isinstance(value, str):  # "1,8"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(value, str) and tp is not str:
        value = yaml.safe_load(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys are an error."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(prefix + k for k in types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {p} is not a group of settings")
    node[parts[-1]] = value


def _load_data(path: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        _set_dotted(data, key.strip(), value)
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Defaults < YAML file < `key=value` overrides."""
    return from_dict(cls, _load_data(path, overrides or []))


def _flag_fields(cls: type) -> list[dataclasses.Field]:
    """Top-level scalar or list fields: those get a `--flag` (groups and mappings do not)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if not dataclasses.is_dataclass(tp) and typing.get_origin(tp) is not dict:
            out.append(f)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def nested_settings(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every setting inside a nested dataclass of `cls`, or
    inside a mapping field whose metadata names its dataclass (`section`): what `key=value`
    overrides can reach beyond the top-level `--flags`."""
    out = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = (f.metadata or {}).get("section") or types_[f.name]  # a mapping of a job's settings
        if dataclasses.is_dataclass(tp):
            for sub in dataclasses.fields(tp):
                key = f"{prefix}{f.name}.{sub.name}"
                if dataclasses.is_dataclass(_field_types(tp)[sub.name]):
                    out += nested_settings(_field_types(tp)[sub.name], f"{key}.")
                else:
                    out.append((key, _default(sub), (sub.metadata or {}).get("help", "")))
    return out


def _epilog(cls: type) -> str:
    rows = nested_settings(cls)
    if not rows:
        return ""
    width = max(len(key) for key, _, _ in rows)
    lines = [
        f"  {key:<{width}}  {helptext}"
        + ("" if "default:" in helptext else f"{' ' if helptext else ''}(default: {default!r})")
        for key, default, helptext in rows
    ]
    return "nested settings, given as key=value:\n" + "\n".join(lines)


def build_parser(cls: type, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with `--config`, a `--flag` per top-level setting and overrides;
    `--help` names every setting once, nested ones (dotted keys) after the flags."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=_epilog(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of settings")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings overrides (dotted keys)"
    )
    types_ = _field_types(cls)
    for f in _flag_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = types_[f.name]
        helptext = (f.metadata or {}).get("help", "")
        if "default:" not in helptext:  # a few help texts say their default in their words
            helptext = f"{helptext} (default: {_default(f)!r})".strip()
        if tp is bool:
            action: Any = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            action, helptext = "append", f"{helptext} (repeatable)"
        else:
            action = "store"
        parser.add_argument(flag, dest=f.name, action=action, default=None, help=helptext)
    return parser


def parse_config(
    cls: type[T],
    argv: list[str] | None = None,
    description: str = "",
    check: Callable[[T], object] | None = None,
) -> T:
    """Parse a job's command line into its config dataclass.

    `check(cfg)` runs next, before the job starts any work (jobs pass `check_inputs`): a
    ValueError it raises exits with status 2 and its message on one line of stderr, as
    argparse reports a bad flag.
    """
    parser = build_parser(cls, description)
    ns = parser.parse_intermixed_args(argv)  # key=value on either side of --flags
    try:
        data = _load_data(ns.config, list(ns.overrides))
        for f in _flag_fields(cls):
            value = getattr(ns, f.name)
            if value is not None:
                data[f.name] = value
        cfg = from_dict(cls, data)
    except ValueError as e:  # ConfigError, or a config's own check (__post_init__)
        parser.error(str(e))
        raise  # unreachable: parser.error exits
    if check is not None:
        try:
            check(cfg)
        except ValueError as e:  # the usage is no help here: the flags were fine
            parser.exit(2, f"{parser.prog}: error: {e}\n")
    return cfg


# ---------------------------------------------------------------- input paths


class Need(NamedTuple):
    """A path a job will read, to be checked before the job starts (`check_inputs`).

    `holds`: what must be inside it, relative to it (a split folder: its three tables);
    an entry that is a tuple is met by any one of its names. Empty: the path itself must
    exist. `what` is said when the path is not that ("a model folder"). An empty `path`
    is a required setting left empty.
    """

    setting: str
    path: str
    holds: tuple[str | tuple[str, ...], ...] = ()
    what: str = ""


def needs(
    cfg: Any,
    setting: str,
    *holds: str | tuple[str, ...],
    what: str = "",
    required: bool = False,
) -> list[Need]:
    """A `Need` per path of `cfg.<setting>` (a path or a list of paths). An empty setting
    is not needed (a job reads nothing for it) unless `required`."""
    value = getattr(cfg, setting)
    paths = [p for p in (value if isinstance(value, (list, tuple)) else [value]) if p]
    if required and not paths:
        return [Need(setting, "", holds, what)]
    return [Need(setting, str(p), holds, what) for p in paths]


def check_inputs(cfg: Any, skip_under: str | os.PathLike = "") -> None:
    """Check every path `cfg.inputs()` names: raise ConfigError naming the setting and
    the path of the first one missing, or lacking what it must hold.

    A local path is looked at on disk; a URI (s3://, gs://, file://) is asked of its
    store, one metadata request per name (`storage.exists`). `skip_under`: local paths
    inside this folder are not checked (the pipeline's own outputs, made by its earlier
    stages). Costs milliseconds locally: jobs call it before starting Ray or loading a
    model, so a missing late input (the efficiency table's pool, a ranker's mined split)
    fails the job in seconds, not after the work before it.
    """
    skip = Path(skip_under).resolve() if skip_under else None
    for setting, path, holds, what in cfg.inputs():
        expected = f" (expected {what})" if what else ""
        if not path:
            raise ConfigError(f"{setting}: not given{expected}")
        if skip and not is_uri(path) and Path(path).resolve().is_relative_to(skip):
            continue
        try:
            problem = _lacking(path, holds)
        except (OSError, ValueError) as e:  # a store that cannot be asked, an unknown scheme
            problem = f"cannot be checked: {e}"
        if problem:
            raise ConfigError(f"{setting}: {path} {problem}{expected}")


def _lacking(path: str, holds: tuple[str | tuple[str, ...], ...]) -> str:
    """What `path` lacks of a `Need`: "does not exist", "holds no x"; "" when nothing."""
    if not exists(path):
        return "does not exist"
    for names in holds:
        names = (names,) if isinstance(names, str) else names
        if not any(exists(path, name) for name in names):
            return (
                f"holds no {names[0]}" if len(names) == 1 else f"holds none of {', '.join(names)}"
            )
    return ""
