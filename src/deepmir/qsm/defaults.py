"""Defaults of the QSM chain: the qsm schema's (:mod:`deepmir.settings`), less the job's
resources (torch-free, so that the command line starts fast)."""
from deepmir import settings

RESOURCES = ("device", "gpu", "threads", "mem_mb", "runtime")
DEFAULTS = {k: v for k, v in settings.read("qsm").items() if k not in RESOURCES}
