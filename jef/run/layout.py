"""How the model runs, not what it computes: ``train.channels_last`` and ``train.compile``.

Both leave the parameters' names and values alone, so checkpoints, exports and ``load_run`` read a run trained
with them as one trained without, and a run may resume with them switched (:data:`jef.run.checkpoint.RESUME_MAY_CHANGE`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["COMPILED", "apply_layout"]

#: The parts ``train.compile`` compiles: the networks, where a step's time goes. The joint model's own forward
#: stays eager: it assembles attrs records (views, branches, outputs), which TorchDynamo cannot trace through
#: (torch 2.14 fails inside an attrs ``__init__``), and it only routes tensors between these parts.
COMPILED = ("backbone", "projector", "predictor", "target_backbone", "target_projector")


def apply_layout(model: nn.Module, options: Any) -> nn.Module:
    """Put ``model`` in channels-last layout and compile its forward, as ``options`` (``train``) ask.

    Channels-last converts every 4-D parameter and buffer (convolution weights) in place; a convolution given a
    channels-last weight returns channels-last activations whatever its input's layout, so the views need no
    conversion. Compiling calls :meth:`torch.nn.Module.compile` on each of :data:`COMPILED` there is, which
    compiles the module's call in place: the modules, their attributes and the ``state_dict`` keys stay as they
    are (``torch.compile(module)`` would wrap it and prefix every key with ``_orig_mod.``), and what the loop does
    around the forward (the objective, backward, the optimiser, the hooks: EMA, queues, monitors) stays eager.

    Args:
        model: The built :class:`jef.model.joint.JointEmbedding`, before ``accelerator.prepare``.
        options: The pipeline's :class:`jef.config.options.TrainOptions`.

    Returns:
        ``model`` itself.
    """
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.compile:
        for name in COMPILED:
            part = getattr(model, name, None)
            if isinstance(part, nn.Module) and not isinstance(part, nn.Identity):
                part.compile()
    return model
