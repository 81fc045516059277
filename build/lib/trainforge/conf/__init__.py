"""trainforge's packaged configs (Hydra: ``pkg://trainforge.conf``)."""
