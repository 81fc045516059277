"""Hydra's own launcher test suites on the local_gpus launcher: it serves any Hydra app (the
pool and the queue); trainforge's checks, thread shares and report apply to trainforge runs."""
import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase


@pytest.fixture(autouse=True)
def fresh_version_base():
    """The suites expect a process whose Hydra version base is unset (as a fresh app's);
    another test in the same worker may have set 1.3."""
    from hydra.core.singleton import Singleton

    saved = Singleton._instances.pop(VersionBase, None)  # the next use makes an unset one
    yield
    if saved is not None:
        VersionBase.set_instance(saved)


@pytest.mark.parametrize("launcher_name, overrides", [("local_gpus", [])])
class TestLocalGpusLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=local_gpus"])])
class TestLocalGpusLauncherIntegration(IntegrationTestSuite):
    pass
