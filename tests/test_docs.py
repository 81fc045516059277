"""The docs stay true: the configuration reference is what the schemas say."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_the_configuration_reference_is_generated_from_the_schemas():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "config_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_schema_key_has_a_row_in_the_reference():
    import dataclasses

    from trainforge.config import SCHEMAS

    text = (ROOT / "docs" / "configuration.md").read_text()
    for group, options in SCHEMAS.items():
        for name, cls in options.items():
            section = text.split(f"### {group}={name}\n" if len(options) > 1 else f"## {group}\n", 1)[1]
            section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
            for f in dataclasses.fields(cls):
                nested = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
                keys = [f"{f.name}.{g.name}" for g in dataclasses.fields(nested)] if nested else [f.name]
                for key in keys if not f.name.startswith("_") or f.name == "_target_" else ():
                    assert f"| `{key}` |" in section, f"{group}={name}: {key}"
