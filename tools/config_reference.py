"""Write docs/configuration.md from the schemas: every group, option, key, default and
what is allowed, with the schema's own comment. The schemas are the one source of the
defaults; this page is generated from them and a test keeps it current.

    python tools/config_reference.py           # rewrite docs/configuration.md
    python tools/config_reference.py --check   # exit 1 if the page is not what the schemas say
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Generated from the schemas (`src/trainforge/config/components.py`, `training.py`) by
`python tools/config_reference.py`; `tests/test_docs.py` fails when it is out of date.
A default is written once, in the schema: an option's YAML in `conf/<group>/` says only
what differs from it (today: `checkpoint.monitor` and `checkpoint.mode`, which follow the
data option: glint `val_dice` / `max`, digits `val_accuracy` / `max`, seqset `val_auroc` /
`max`, plain datasets and any other data `val_loss` / `min`; a monitor set without a mode
gets `min` when its name holds `loss`, else `max`).

Set a key on the command line (`python train.py optimizer.lr=1e-3`), choose an option
(`scheduler=cosine`), or write both in an experiment preset (`conf/experiment/*.yaml`).
A value that is not allowed stops the run before anything is written, with one line
naming the key and what is allowed.
"""


def comments(cls) -> dict:
    """field name -> the comment on its line in the schema's source."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+):[^#]*(?:#\s*(.*))?$", line)
        if line.strip().startswith("#"):
            above.append(line.strip().lstrip("#").strip())
            continue
        if match and (match.group(2) or above):
            out[match.group(1)] = " ".join([*above, match.group(2) or ""]).strip()
        above = []
    return out


def default_of(field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def allowed_of(field) -> str:
    checks = field.metadata.get("checks", ())
    text = "; ".join(getattr(c, "allowed", None) or (c.__doc__ or "").strip().rstrip(".") for c in checks)
    return text or field.type if isinstance(field.type, str) else text


def table(cls, inherited: dict) -> list:
    notes = {**inherited, **{k: v for klass in reversed(cls.__mro__[:-1]) if dataclasses.is_dataclass(klass)
                             for k, v in comments(klass).items()}}
    rows = ["| key | default | allowed | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") and f.name != "_target_":
            continue
        if f.name in ("model", "data", "loss", "optimizer", "scheduler", "log", "trainer", "checkpoint", "collapse"):
            continue  # TrainConf's groups have sections of their own
        nested = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
        if nested is not None:  # a schema inside the schema (trainer.ema): one row per key, dotted
            rows += [row.replace("| `", f"| `{f.name}.", 1) for row in table(nested, {})[2:]]
            continue
        what = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default_of(f)}` | {allowed_of(f).replace('|', '/')} | {what} |")
    return rows


def page() -> str:
    import trainforge  # noqa: F401
    from trainforge.config import SCHEMAS, TrainConf

    out = [HEADER, "## Top level (`conf/train.yaml`)", "", *table(TrainConf, {}), ""]
    for group, options in SCHEMAS.items():
        out += [f"## {group}", ""]
        for name, cls in options.items():
            if len(options) > 1:
                out += [f"### {group}={name}", ""]
            out += [*table(cls, {}), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv) -> int:
    text = page()
    if "--check" in argv:
        if PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
