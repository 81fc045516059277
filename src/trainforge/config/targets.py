"""The user's own classes in a config: ``_target_`` nodes that no schema of ours describes.

Two things, both about such nodes:

- **Composition** (:func:`install`): Hydra merges each config of the defaults list into the
  result key by key. Here a node that names another ``_target_`` than the node it lands on
  *replaces* it (an experiment's ``model: {_target_: my_pkg.Net, width: 8}`` does not inherit
  the UNet's keys), and two short forms are spelled out: a ``data`` node with ``train`` and
  no ``_target_`` is plain datasets (``trainforge.data.Datasets``, with its loader defaults),
  and a ``metrics`` list becomes a mapping named after the classes.
- **The door** (:func:`check_targets`): each such node is checked against its callable's
  signature and annotations before anything starts: an import error with its file and line,
  an unknown key with a did-you-mean, a missing required argument, a value of the wrong type.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import traceback
import typing

from trainforge.config.rules import closest, fail
from trainforge.errors import ConfigError

DATASETS = "trainforge.data.Datasets"
# keys build consumes itself, besides the callable's arguments
OWN_KEYS = {"model": ("init_weights",)}
# groups whose _target_ may be a plain function, called on every batch: the config holds
# its other arguments (build makes it a partial)
FUNCTIONS = ("loss",)


def is_function(key: str, target) -> bool:
    """Whether ``key``'s ``_target_`` is a function taken as it is (a loss of PyTorch's
    convention, ``fn(output, target)``), not called to build an object."""
    return key in FUNCTIONS and inspect.isfunction(locate(key, target))


# ---- composition ---------------------------------------------------------------------
def install() -> None:
    """Make Hydra's config loader (this process's) compose with the rules above. Idempotent;
    the command, ``compose_config`` and the launchers' jobs call it, not the package import."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    if getattr(ConfigLoaderImpl._compose_config_from_defaults_list, "trainforge", False):
        return
    _compose.trainforge = True
    ConfigLoaderImpl._compose_config_from_defaults_list = _compose


def _compose(self, defaults, repo):
    """Hydra 1.3's ``ConfigLoaderImpl._compose_config_from_defaults_list`` with :func:`spelled_out`
    and :func:`clear_retargeted` applied to each config before it is merged."""
    from hydra._internal.config_loader_impl import flag_override
    from hydra.errors import ConfigCompositionException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.create()
    with flag_override(cfg, "no_deepcopy_set_nodes", True):
        for default in defaults:
            loaded = self._load_single_config(default=default, repo=repo)
            try:
                if isinstance(loaded.config, DictConfig):
                    spelled_out(loaded.config)
                    clear_retargeted(cfg, loaded.config)
                cfg.merge_with(loaded.config)
            except OmegaConfBaseException as e:
                raise ConfigCompositionException(f"In '{default.config_path}': {type(e).__name__} raised while "
                                                 f"composing config:\n{e}").with_traceback(sys.exc_info()[2])
    _strip_defaults(cfg)
    _open_user_nodes(cfg)
    return cfg


OPEN = ("metrics", "callbacks")  # mappings of the user's: a new name from the command line needs no +


def _open_user_nodes(cfg, key: str = "") -> None:
    """A node of the user's (a ``_target_`` without a schema) takes any key from the command line
    (``model.width=16`` where the file leaves ``width`` at its default): the door checks the
    keys against the callable's signature instead (:func:`check_call`). So do ``metrics`` and
    ``callbacks`` (``metrics.f1={_target_: ...}``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig) and not cfg._is_none() and not cfg._is_missing():
        if ("_target_" in cfg and OmegaConf.get_type(cfg) is dict) or key in OPEN:
            cfg._set_flag("struct", False)
        for child, value in cfg.items_ex(resolve=False):
            _open_user_nodes(value, f"{key}.{child}" if key else str(child))
    elif isinstance(cfg, ListConfig) and not cfg._is_none() and not cfg._is_missing():
        for value in cfg._iter_ex(resolve=False):
            _open_user_nodes(value, key)


def _strip_defaults(cfg) -> None:
    """Remove the defaults lists left in the nodes (as Hydra does after composing)."""
    from hydra._internal.config_loader_impl import flag_override
    from omegaconf import DictConfig

    if not isinstance(cfg, DictConfig) or cfg._is_missing() or cfg._is_none():
        return
    with flag_override(cfg, ["readonly", "struct"], False):
        if cfg._get_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS"):
            cfg._set_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS", None)
            cfg.pop("defaults", None)
    for _key, value in cfg.items_ex(resolve=False):
        _strip_defaults(value)


def _raw_target(node):
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing() or "_target_" not in node:
        return None
    value = node._get_node("_target_")._value()
    return value if isinstance(value, str) and "${" not in value else None


def clear_retargeted(cfg, src) -> None:
    """Empty each node of ``cfg`` that ``src`` (merged next) gives another ``_target_``, so the
    merge builds it from ``src`` alone; recurse where the targets agree."""
    from hydra._internal.config_loader_impl import flag_override
    from omegaconf import DictConfig

    for key in list(src.keys()):
        if key not in cfg or not isinstance(src._get_node(key), DictConfig):
            continue
        old, new = _raw_target(cfg._get_node(key)), _raw_target(src._get_node(key))
        if old and new and old != new:
            with flag_override(cfg, ["readonly", "struct"], False):
                cfg[key] = {}
        elif isinstance(cfg._get_node(key), DictConfig) and not cfg._get_node(key)._is_none():
            clear_retargeted(cfg._get_node(key), src._get_node(key))


def spelled_out(config) -> None:
    """``data: {train: ..., val: ...}`` without a ``_target_`` (or with Datasets' own) becomes
    the typed Datasets node with its defaults; ``metrics: [node, ...]`` a mapping."""
    from hydra._internal.config_loader_impl import flag_override
    from omegaconf import DictConfig, ListConfig, OmegaConf

    data = config._get_node("data") if "data" in config else None
    if isinstance(data, DictConfig) and not data._is_none() and "train" in data and \
            _raw_target(data) in (None, DATASETS) and OmegaConf.get_type(data) is dict:
        from trainforge.config.components import DatasetsConf

        with flag_override(config, ["readonly", "struct"], False):
            config.data = OmegaConf.merge(OmegaConf.structured(DatasetsConf), data)
    metrics = config._get_node("metrics") if "metrics" in config else None
    if isinstance(metrics, ListConfig) and not metrics._is_none():
        named = {}
        for node in metrics:
            name = str(_raw_target(node) or "metric").rpartition(".")[2].lower()
            named[name if name not in named else f"{name}_{len(named)}"] = node
        with flag_override(config, ["readonly", "struct"], False):
            config.metrics = named


# ---- the door ------------------------------------------------------------------------
def check_targets(cfg, by_target: dict) -> None:
    """Check every ``_target_`` node of ``cfg`` that has no schema against its callable."""
    for key in cfg:
        if key != "hydra":
            _walk(key, cfg._get_node(key), by_target)


def _walk(key: str, node, by_target: dict) -> None:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
        typed = OmegaConf.get_type(node) is not dict or by_target.get(node.get("_target_")) is not None
        if "_target_" in node and not typed:
            check_call(key, node)
        for child in node:
            _walk(f"{key}.{child}", node._get_node(child), by_target)
    elif isinstance(node, ListConfig) and not node._is_none() and not node._is_missing():
        for i in range(len(node)):
            _walk(f"{key}[{i}]", node._get_node(i), by_target)


def locate(key: str, target: str):
    """The object ``target`` names; an import that fails is one line with where it failed."""
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{key}._target_={target}: must be the import path of a class or function")
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):  # that module (or a parent) is not there: try shorter
                continue
            raise _import_error(key, target, e) from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing
            raise _import_error(key, target, e) from None
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = closest(parts[cut], names)
            hint = f"; did you mean {module_name}.{close}?" if close else ""
            raise ConfigError(f"{key}._target_={target}: {module_name} has no {'.'.join(parts[cut:])}{hint}") from None
        return obj
    raise ConfigError(f"{key}._target_={target}: no module {parts[0]} can be imported (is its folder the working "
                      "directory, or the one holding your --config-dir?)")


def _import_error(key: str, target: str, e: BaseException) -> ConfigError:
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f" ({e.filename}:{e.lineno})"
    else:
        frames = traceback.extract_tb(e.__traceback__)
        user = [f for f in frames if "importlib" not in f.filename]
        if user:
            where = f" ({user[-1].filename}:{user[-1].lineno})"
    text = str(e).splitlines()[0] if str(e).strip() else ""
    return ConfigError(f"{key}._target_={target}: importing it failed: {type(e).__name__}: {text}{where}")


def parameters(obj) -> tuple:
    """(parameters by name, takes any keyword) of a callable; ({}, True) when it has no signature."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}, True
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return params, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _hints(obj) -> dict:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        return {n: p.annotation for n, p in parameters(obj)[0].items() if isinstance(p.annotation, type)}


def check_call(key: str, node) -> None:
    """``node``'s keys against the signature of the callable its ``_target_`` names."""
    from omegaconf import DictConfig

    target = node.get("_target_")
    obj = locate(key, target)
    params, any_keyword = parameters(obj)
    given = [k for k in node if not str(k).startswith("_") and k not in OWN_KEYS.get(key, ())]
    if not params and any_keyword:
        return
    for k in given:
        if k not in params and not any_keyword:
            close = closest(k, list(params))
            hint = f"did you mean {key}.{close}? " if close else ""
            raise fail(f"{key}.{k}", node.get(k), f"not a parameter of {target} ({hint}it takes: "
                                                  f"{', '.join(params) or 'nothing'})")
    if not (node.get("_partial_", False) or (key in FUNCTIONS and inspect.isfunction(obj))):
        for name, p in params.items():
            if p.default is p.empty and name not in given and p.kind != p.POSITIONAL_ONLY:
                raise ConfigError(f"{key}.{name}: required by {target} (it has no default); set it in the config "
                                  f"or with +{key}.{name}=VALUE")
    hints = _hints(obj)
    for k in given:
        value = node.get(k)
        if k in hints and not isinstance(value, DictConfig):
            expected = _mismatch(value, hints[k])
            if expected:
                raise fail(f"{key}.{k}", value, f"must be {expected} (the type of {target}'s argument {k})")


def _mismatch(value, annotation):
    """None if ``value`` (from YAML) fits ``annotation``, else what is expected. Annotations
    this cannot judge (tensors, modules, callables, classes of the user's) pass."""
    from omegaconf import ListConfig

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any or annotation is inspect.Parameter.empty:
        return None
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        options = [_mismatch(value, a) for a in args]
        if any(o is None for o in options):
            return None
        return " or ".join(o for o in options if o)
    if origin is typing.Literal:
        return None if value in args else f"one of {', '.join(map(repr, args))}"
    if annotation is type(None):
        return None if value is None else "null"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in simple:
        ok = isinstance(value, bool) if annotation is bool else \
            isinstance(value, int) and not isinstance(value, bool) if annotation is int else \
            isinstance(value, (int, float)) and not isinstance(value, bool) if annotation is float else \
            isinstance(value, str)
        return None if ok else simple[annotation]
    container = origin or annotation
    if container in (list, tuple, typing.Sequence) or (inspect.isclass(container) and
                                                       container.__name__ in ("Sequence", "list", "tuple")):
        return None if isinstance(value, (ListConfig, list, tuple)) else "a list"
    return None
