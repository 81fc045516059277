"""The config door: structured schemas for every group, their rules, and ``validate``.

Importing this package registers the schemas with Hydra's ConfigStore. Names a run or a
user may import: the schema classes, ``SCHEMAS`` (group -> option -> schema),
``BY_TARGET``, ``validate``, ``progress_mode``, ``check_devices``, ``WEIGHTS_FILE``.
"""
from trainforge.config.schemas import *  # noqa: F401,F403
from trainforge.config.schemas import BY_TARGET, EXTRA_TOP_LEVEL, SCHEMAS, register, schema_name  # noqa: F401
from trainforge.config.components import WEIGHTS_FILE  # noqa: F401
from trainforge.config.validate import PROGRESS, check_devices, progress_mode, validate  # noqa: F401

register()
