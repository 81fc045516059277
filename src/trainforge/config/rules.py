"""Rules a type cannot express, declared next to each option's schema field.

A schema field carries its checks in ``dataclasses.field`` metadata; relations between
keys (also across groups) are a ``RULES`` class variable of the schema dataclass::

    @dataclass
    class CosineConf:
        warmup_epochs: float = opt(0.0, at_least(0))
        RULES: ClassVar[tuple] = (
            Rule("warmup_epochs", lambda n, cfg: n.warmup_epochs < cfg.trainer.epochs,
                 "must be less than trainer.epochs={cfg.trainer.epochs}"),
        )

A check is ``check(value) -> None | str``: None when the value is allowed, else what is
allowed. :func:`check_config` walks a composed config, finds each node's schema from its
OmegaConf object type (falling back to its ``_target_``), and raises ConfigError with one
line ``key=value: what is allowed`` for the first failure. It also refuses keys that no
schema declares (a ``+key=value`` typo), suggesting the closest known key.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Callable, Optional

from trainforge.errors import ConfigError

Check = Callable[[Any], Optional[str]]


def opt(default, *checks: Check, **kwargs):
    """A schema field with a default (a list default is copied per instance) and checks."""
    meta = {"checks": checks}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A relation: ``ok(node, cfg)`` must hold, else ``key`` (relative to the node, or a
    full dotted key when it starts with ``/``) is named with ``allowed``, formatted with
    ``node`` and ``cfg`` (``{cfg.trainer.epochs}``)."""

    key: str
    ok: Callable[[Any, Any], bool]
    allowed: Any  # str, or a function (node, cfg) -> str

    def message(self, node, cfg) -> str:
        return self.allowed(node, cfg) if callable(self.allowed) else self.allowed.format(node=node, cfg=cfg)


# ---- checks --------------------------------------------------------------------------
def described(check: Check, allowed: str) -> Check:
    """``check`` with ``allowed``: what it lets through, for the configuration reference."""
    check.allowed = allowed
    return check


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interval(low=None, high=None, low_open=False, high_open=False, integer=False) -> Check:
    """A number in [low, high] (``low_open``/``high_open`` exclude the ends)."""
    kind = "an integer" if integer else "a number"
    if high is None:
        text = f"must be {kind} {'>' if low_open else '>='} {low}"
    else:
        text = f"must be {kind} with {low} {'<' if low_open else '<='} x {'<' if high_open else '<='} {high}"

    def check(value):
        if not _num(value) or value != value:  # NaN fails every range
            return text
        if value < low or (low_open and value == low):
            return text
        if high is not None and (value > high or (high_open and value == high)):
            return text
        return None

    return described(check, text.removeprefix("must be "))


positive = interval(0, low_open=True)


def at_least(low, integer=True) -> Check:
    return interval(low, integer=integer)


def fraction(open_ends=False) -> Check:
    """A number in [0, 1] (or (0, 1))."""
    return interval(0, 1, low_open=open_ends, high_open=open_ends)


def one_of(*allowed) -> Check:
    """One of ``allowed``, compared case-insensitively as text (so YAML's true/false match)."""
    names = [str(a).lower() for a in allowed]

    def check(value):
        return None if str(value).lower() in names else f"allowed values are {', '.join(names)}"

    return described(check, " | ".join(names))


def int_or(*words) -> Check:
    """An integer >= 1, or one of ``words``."""
    def check(value):
        if _num(value) and int(value) == value and value >= 1:
            return None
        if isinstance(value, str) and value.lower() in words:
            return None
        return f"must be an integer >= 1 or {' or '.join(words)}"

    return described(check, f"an integer >= 1 or {' or '.join(words)}")


def matches(pattern: str, allowed: str) -> Check:
    def check(value):
        return None if re.fullmatch(pattern, str(value)) else allowed

    return described(check, allowed.removeprefix("allowed values are "))


def ascending(value) -> Optional[str]:
    """A list of numbers > 0 in strictly ascending order."""
    items = list(value)
    if all(_num(v) and v > 0 for v in items) and all(a < b for a, b in zip(items, items[1:])):
        return None
    return "must be numbers > 0 in strictly ascending order, e.g. [30,60]"


def betas(value) -> Optional[str]:
    items = list(value)
    if len(items) == 2 and all(_num(b) and 0 <= b < 1 for b in items):
        return None
    return "must be two numbers in [0, 1), e.g. [0.9,0.999]"


def existing_file(kind: str) -> Check:
    """A path to an existing file (``~`` expanded); ``kind`` says what it should hold."""
    def check(value):
        path = Path(str(value)).expanduser()
        if path.is_file():
            return None
        if path.is_dir():
            return f"is a directory; must be {kind}"
        return f"file not found; must be {kind}"

    return described(check, kind)


def checkpoint_file(what: str) -> Check:
    """An existing file written by ``torch.save`` (a zip archive), e.g. a ``.pth``."""
    def check(value):
        import zipfile

        path = Path(str(value)).expanduser()
        if not path.is_file():
            return f"{'is a directory' if path.is_dir() else 'file not found'}; must be {what}"
        if zipfile.is_zipfile(path):
            return None
        return f"not a checkpoint (truncated, corrupt or another kind of file); must be {what}"

    return described(check, what)


def resume_target(value) -> Optional[str]:
    """A checkpoint file, a run directory or auto."""
    path = Path(str(value)).expanduser()
    if value == "auto" or path.is_dir():
        return None
    if path.is_file():
        return checkpoint_file("a checkpoint (.pth), a run directory or auto")(value)
    return "no such checkpoint file or run directory; must be a checkpoint, a run directory or auto"


# ---- walking a composed config -----------------------------------------------------
def schema_of(node, by_target: dict):
    """The dataclass a composed node was typed with (or the one its ``_target_`` names)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return None
    kind = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(kind):
        return kind
    return by_target.get(node.get("_target_"))


def _show(value) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", str(value))  # a URI's user:secret@ is never shown


def fail(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)}: {allowed}")


def _rules(kind) -> list:
    """``RULES`` of the class and its bases, base rules first."""
    return [r for k in reversed(kind.__mro__) for r in vars(k).get("RULES", ())]


def check_node(prefix: str, node, kind, cfg) -> None:
    """Every field check, then every relation, of one schema-typed node."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    for f in dataclasses.fields(kind):
        try:
            value = node.get(f.name)
        except InterpolationResolutionError as exc:  # ${oc.env:UNSET}, ${no.such.key}: name the key
            raw = OmegaConf.to_container(node, resolve=False).get(f.name)
            raise ConfigError(f"{prefix}{f.name}={raw}: {str(exc).splitlines()[0]}") from None
        if value is None:  # null passed the type check: it is allowed
            continue
        nested = _nested(f)
        if nested is not None:  # a schema inside the schema (trainer.ema): its keys are checked too
            check_node(f"{prefix}{f.name}.", value, nested, cfg)
            continue
        for check in f.metadata.get("checks", ()):
            allowed = check(value)
            if allowed:
                raise fail(f"{prefix}{f.name}", value, allowed)
    for rule in _rules(kind):
        if not rule.ok(node, cfg):
            key = rule.key[1:] if rule.key.startswith("/") else f"{prefix}{rule.key}"
            raise fail(key, OmegaConf.select(cfg, key), rule.message(node, cfg))


def _nested(f):
    """The dataclass of a field that holds a schema of its own (``trainer.ema``), else None."""
    if f.default_factory is dataclasses.MISSING:
        return None
    kind = f.default_factory
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


UNDECLARED = object()  # the default of a key no schema declares: no value equals it


def schema_default(cfg, key: str, root, by_target: dict):
    """The default the schemas (``root``, the groups' by ``_target_``) give dotted ``key`` of
    ``cfg`` (``trainer.ema.decay``, ``data.num_samples``), or ``UNDECLARED``."""
    kind, node = root, cfg
    *path, name = key.split(".")
    for part in path:
        field = next((f for f in dataclasses.fields(kind) if f.name == part), None) if kind else None
        node = node.get(part) if node is not None and hasattr(node, "get") else None
        kind = (_nested(field) if field is not None else None) or schema_of(node, by_target)
    field = next((f for f in dataclasses.fields(kind) if f.name == name), None) if kind else None
    if field is None or _nested(field):
        return UNDECLARED
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else UNDECLARED


def known_keys(cfg, root, by_target: dict) -> list:
    """Every key the composed config's schemas declare, dotted (for suggestions)."""
    keys = [f.name for f in dataclasses.fields(root)]
    for name in cfg:
        kind = schema_of(cfg[name], by_target)
        if kind is not None:
            for f in dataclasses.fields(kind):
                nested = _nested(f)
                keys += [f"{name}.{f.name}.{g.name}" for g in dataclasses.fields(nested)] if nested else \
                    [f"{name}.{f.name}"]
    return keys


def closest(key: str, known: list):
    """The known key most like ``key``, comparing whole keys and their last parts
    (``+epochs`` -> ``trainer.epochs``); None if nothing is close."""
    def score(k):
        whole = difflib.SequenceMatcher(None, key, k).ratio()
        leaf = difflib.SequenceMatcher(None, key.rpartition(".")[2], k.rpartition(".")[2]).ratio()
        return max(whole, leaf - 0.05)
    best = max(known, key=score, default=None)
    return best if best is not None and score(best) >= 0.75 else None


def unknown_keys(cfg, root, by_target: dict, extra_top=()) -> None:
    """Refuse a key no schema declares (nothing would read it), naming the closest known."""
    declared = {f.name for f in dataclasses.fields(root)} | set(extra_top)
    found = [k for k in cfg if k not in declared]
    for name in cfg:
        kind = schema_of(cfg[name], by_target) if name in declared else None
        if kind is not None:
            fields = {f.name for f in dataclasses.fields(kind)}
            found += [f"{name}.{k}" for k in cfg[name] if k not in fields]
    if found:
        key = found[0]
        close = closest(key, known_keys(cfg, root, by_target))
        hint = f"; did you mean {close}?" if close else "; see python train.py --cfg job for the keys"
        raise fail(key, cfg.get(key) if "." not in key else _select(cfg, key),
                   f"no such config key (nothing reads it){hint}")


def _select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, throw_on_missing=False)


def check_config(cfg, root, by_target: dict, extra_top=()) -> None:
    """Unknown keys first (a typo'd key makes its neighbours' checks meaningless), then the
    checks and relations of the root schema and of each group's schema."""
    unknown_keys(cfg, root, by_target, extra_top)
    check_node("", cfg, root, cfg)
    for name in cfg:
        kind = schema_of(cfg[name], by_target)
        if kind is not None:
            check_node(f"{name}.", cfg[name], kind, cfg)
