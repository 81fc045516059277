"""``./conf`` of the working directory joins trainforge's config search path when it exists:
``cd my_project && trainforge model=my_net`` finds ``my_project/conf/model/my_net.yaml``.
Other Hydra apps are left alone (their search path has no ``pkg://trainforge.conf``)."""
from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "trainforge (./conf)"


class WorkingDirectoryConf(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        entries = search_path.get_path()
        if not any(e.provider == "main" and e.path == "pkg://trainforge.conf" for e in entries):
            return
        folder = Path.cwd() / "conf"
        if folder.is_dir() and not (folder / "train.yaml").is_file():  # (not trainforge's own conf/)
            search_path.append(PROVIDER, f"file://{folder.resolve()}", anchor=SearchPathQuery(provider="main"))
