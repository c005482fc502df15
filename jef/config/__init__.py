"""The pipeline file: reading it, merging it with its method's recipe, validating it.

* :mod:`jef.config.pipeline` -- :class:`Pipeline` and :class:`Slot`, :func:`load_pipeline`, :func:`resolve`,
  :func:`merge` and the requirements check;
* :mod:`jef.config.yaml` -- the hardened YAML reader (:func:`read_yaml`, :func:`parse_yaml`);
* :mod:`jef.config.overrides` -- ``key.path=value`` overrides (:func:`apply_overrides`);
* :mod:`jef.config.provenance` -- where each value came from (recipe, base file, file, command line), and the
  annotated YAML ``jef config show`` prints;
* :mod:`jef.config.options` -- the attrs options of the core sections (``target``, ``train``, ``eval``);
* :mod:`jef.config.validate` -- turning plain YAML data into attrs options, with errors that name the YAML path.
"""

from jef.config.overrides import apply_overrides
from jef.config.pipeline import (CORE_DEFAULTS, LIST_SLOTS, SLOTS, TOP_LEVEL, WEIGHTED, Pipeline, Slot,
                                 check_requirements, load_pipeline, merge, resolve)
from jef.config.validate import ConfigError
from jef.config.yaml import parse_yaml, read_yaml

__all__ = ["CORE_DEFAULTS", "LIST_SLOTS", "SLOTS", "TOP_LEVEL", "WEIGHTED", "ConfigError", "Pipeline", "Slot",
           "apply_overrides", "check_requirements", "load_pipeline", "merge", "parse_yaml", "read_yaml", "resolve"]
