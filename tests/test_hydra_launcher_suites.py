"""Hydra's own launcher test suites on the local_gpus launcher: it serves any Hydra app (the
pool and the queue); trainforge's checks, thread shares and report apply to trainforge runs."""
import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite


@pytest.mark.parametrize("launcher_name, overrides", [("local_gpus", [])])
class TestLocalGpusLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=local_gpus"])])
class TestLocalGpusLauncherIntegration(IntegrationTestSuite):
    pass
