"""A search's space, written as Hydra's sweep syntax: on the command line or in the
sweeper's ``params`` block, ``choice(a,b)`` (or ``a,b``), ``range(1,9,2)``,
``interval(1e-4,1e-2)`` and ``tag(log, interval(1e-5,1e-1))``; each becomes an Optuna
distribution. Every other override is fixed: each trial gets it as given."""
from __future__ import annotations

from typing import Dict, List, Tuple

from trainforge.errors import ConfigError


def split(arguments: List[str], params: Dict[str, str]) -> Tuple[dict, List[str]]:
    """(space: key -> Optuna distribution, the fixed overrides) of a search's arguments."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(given):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise ConfigError("hydra/sweeper=search: nothing to search; give a key a range, e.g. "
                          "'optimizer.lr=tag(log, interval(1e-4, 1e-1))' or 'model.width=choice(32,64,128)'")
    return space, fixed


def distribution(override):
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key, sweep = override.get_key_element(), override.value()
    tags = set(getattr(sweep, "tags", None) or ())
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) holds no value")
        if all(isinstance(v, int) for v in values):
            return d.IntDistribution(values[0], values[-1], step=int(sweep.step))
        return d.FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        low, high, log = sweep.start, sweep.end, "log" in tags
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{key}: interval({low}, {high}){' tagged log' if log else ''}: the low end must be "
                              f"below the high end{' and above 0' if log else ''}")
        if "int" in tags or (isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool)):
            return d.IntDistribution(int(low), int(high), log=log)
        return d.FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{key}: '{override.input_line}' is no search range; use choice(...), range(...) or "
                      "interval(...), optionally tag(log, ...)")


def grid(space: dict) -> dict:
    """The grid sampler's space: every value of each key (a key given an interval has none)."""
    import optuna.distributions as d

    values = {}
    for key, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            values[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None and not getattr(dist, "log", False):
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            values[key] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise ConfigError(f"hydra.sweeper.sampler=grid: {key} is an interval; a grid needs choice(...) or "
                              "range(...) for every key")
    return values


def as_override(key: str, value) -> str:
    """A sampled value as the override a trial gets (the same text for the same value)."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, float):
        return f"{key}={value!r}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"


def _plain(value):
    """A choice as a plain value (Hydra gives quoted strings and numbers as they are)."""
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
