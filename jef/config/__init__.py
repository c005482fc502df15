"""The pipeline file: reading it, merging it with its method's recipe, validating it.

* :mod:`jef.config.pipeline` -- :class:`Pipeline` and :class:`Slot`, :func:`load_pipeline`, :func:`resolve`,
  the strict YAML reader and ``key.path=value`` overrides;
* :mod:`jef.config.options` -- the attrs options of the core sections (``target``, ``train``, ``eval``);
* :mod:`jef.config.validate` -- turning plain YAML data into attrs options, with errors that name the YAML path.
"""

from jef.config.pipeline import (CORE_DEFAULTS, LIST_SLOTS, SLOTS, TOP_LEVEL, WEIGHTED, Pipeline, Slot,
                                 apply_overrides, check_requirements, load_pipeline, merge, parse_yaml, read_yaml,
                                 resolve)
from jef.config.validate import ConfigError

__all__ = ["CORE_DEFAULTS", "LIST_SLOTS", "SLOTS", "TOP_LEVEL", "WEIGHTED", "ConfigError", "Pipeline", "Slot",
           "apply_overrides", "check_requirements", "load_pipeline", "merge", "parse_yaml", "read_yaml", "resolve"]
