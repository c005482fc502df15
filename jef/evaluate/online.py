"""A linear classifier trained online, alongside self-supervised training, on detached features.

The online linear probe of SimCLR's reference code (``lineareval_while_pretraining``;
Chen et al., SimCLR, arXiv:2002.05709) and of solo-learn (da Costa et al.,
arXiv:2108.01775): every step, a linear head sees the backbone features of the
training batch, *detached*, with the batch's labels, and takes one optimiser
step of its own. Its accuracy on each batch, measured before the update on it,
is a cheap running estimate of linear separability on augmented training
images; it is not the offline linear-probe protocol (frozen final backbone,
un-augmented images, a held-out test split) and reads lower early in training.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OnlineLinearProbe"]


class OnlineLinearProbe:
    """A linear head and its own optimiser, updated one batch at a time.

    The head starts at zero (no random number is drawn, so adding a probe
    never changes a seeded run) and is trained with AdamW on the
    cross-entropy; features are detached and cast to float32, so neither the
    features' graph nor mixed precision reaches it.

    Args:
        in_dim: Feature width.
        num_classes: Number of classes; labels lie in ``[0, num_classes)``, ``-1`` means unlabelled.
        lr: AdamW learning rate.
        weight_decay: AdamW (decoupled) weight decay.
        device: Where the head lives (the training device).
    """

    def __init__(self, in_dim: int, num_classes: int, *, lr: float = 1e-3, weight_decay: float = 0.0,
                 device: str | torch.device = "cpu") -> None:
        if in_dim < 1 or num_classes < 2:
            raise ValueError(f"OnlineLinearProbe needs in_dim >= 1 and num_classes >= 2, "
                             f"got {in_dim} and {num_classes}")
        self.num_classes = num_classes
        self.linear = nn.Linear(in_dim, num_classes, device=device)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=lr, weight_decay=weight_decay)

    def update(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Predict the labelled samples, then take one optimiser step on them.

        Args:
            features: ``[N, in_dim]`` features (detached here).
            labels: ``[N]`` classes, ``-1`` for unlabelled samples (skipped).

        Returns:
            ``(correct, counted)``: 0-dim int64 tensors on the head's device, the
            number of labelled samples whose prediction *before* the update was
            right, and the number of labelled samples. Kept as tensors so that
            the training loop is not synchronised with the device every step.
        """
        if features.dim() != 2 or labels.shape != (features.shape[0],):
            raise ValueError(f"OnlineLinearProbe.update expects features [N, d] and labels [N], "
                             f"got {tuple(features.shape)} and {tuple(labels.shape)}")
        device = self.linear.weight.device
        labels = labels.to(device=device, dtype=torch.long)
        keep = labels >= 0
        x = features.detach().to(device=device, dtype=torch.float32)[keep]
        y = labels[keep]
        if y.numel() == 0:
            zero = torch.zeros((), dtype=torch.long, device=device)
            return zero, zero.clone()
        # The step-end hooks run outside the model's autocast, but a plugin's own step may not: keep float32.
        with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
            logits = self.linear(x)
            correct = (logits.detach().argmax(dim=1) == y).sum()
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return correct, torch.tensor(y.numel(), device=device)

    def state_dict(self) -> dict[str, Any]:
        """The head's weights and the optimiser's state (for checkpoints)."""
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned; the shapes must match.

        Raises:
            ValueError: The saved head has another shape (a different backbone or class count).
        """
        saved = tuple(state["linear"]["weight"].shape)
        if saved != tuple(self.linear.weight.shape):
            raise ValueError(f"the checkpoint's online linear probe has shape {saved} (classes, features) but this "
                             f"run's has {tuple(self.linear.weight.shape)}: resume with the pipeline the run was "
                             f"started with")
        self.linear.load_state_dict(state["linear"])
        # A copy: Optimizer.load_state_dict keeps the given moment tensors when their device and dtype already fit,
        # so an in-memory state would otherwise be shared with (and updated twice by) the probe it came from.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
