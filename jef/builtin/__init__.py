"""jef's built-in plugins: registered through the same hooks as third-party plugins, listed here explicitly.

A module here that is not in :data:`BUILTIN_PLUGINS` is not loaded as a plugin: ``evaluation`` holds the run
plugin the loop registers for each run. Adding a built-in plugin means adding its module name here (a test
checks that every module with module-level hooks is listed).
"""

#: The modules of :mod:`jef.builtin` loaded as plugins, named ``builtin.<module>``, in loading order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "augmenters",
    "backbones",
    "banks",
    "commands",
    "compare_command",
    "cpu_bf16_conv",
    "datasets",
    "decorrelation",
    "energies",
    "eval_command",
    "export_commands",
    "functionals",
    "heads",
    "loggers",
    "maskers",
    "monitors",
    "online_linear",
    "periodic_knn",
    "python_objects",
    "queues",
    "report_command",
    "step",
    "targets",
    "text",
    "token_predictor",
    "token_targets",
    "vit",
)

__all__ = ["BUILTIN_PLUGINS"]
