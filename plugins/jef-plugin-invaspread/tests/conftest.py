"""Fixtures shared by the Invariant and Spreading plugin's tests."""

import pytest
import torch

from jef.testing import installed_plugins


@pytest.fixture(scope="module")
def plugins():
    """Every installed plugin, this one included."""
    return installed_plugins("invaspread")


@pytest.fixture(scope="session")
def reference():
    """Ye et al. 2019 (arXiv:1904.03436), Eqs. 2, 3 and 6, with explicit loops in float64: ``J``."""
    return invaspread_reference

def invaspread_reference(x: torch.Tensor, x_hat: torch.Tensor, temperature: float) -> torch.Tensor:
    """``J`` of Eq. 6 (a sum over the m instances), differentiable, in float64."""
    f = [row / row.norm() for row in x.double()]
    f_hat = [row / row.norm() for row in x_hat.double()]
    m = len(f)

    def p_hat(i):  # Eq. 2: P(i | x̂_i), the denominator over the batch's f_k
        return torch.exp(f[i] @ f_hat[i] / temperature) / sum(torch.exp(f[k] @ f_hat[i] / temperature)
                                                               for k in range(m))

    def p(i, j):  # Eq. 3: P(i | x_j), j != i, the denominator over the batch's f_k (k = j included)
        return torch.exp(f[i] @ f[j] / temperature) / sum(torch.exp(f[k] @ f[j] / temperature) for k in range(m))

    total = torch.zeros((), dtype=torch.float64)
    for i in range(m):
        total = total - torch.log(p_hat(i))
        for j in range(m):
            if j != i:
                total = total - torch.log(1 - p(i, j))
    return total
