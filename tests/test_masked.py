"""The masked path's maths against references: smooth L1, token norms, patch pixels, the global-batch mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jef.builtin.heads import TokenLinearHead
from jef.builtin.maskers import Masker, RandomOptions
from jef.components import MaskedOutputs, Masks, Tokens
from jef.functional import block_average, normalize_tokens, patch_pixels, smooth_l1
from jef.model.masked import masked_energy
from jef.plugins import load_plugins

torch.manual_seed(0)


def test_smooth_l1_is_the_huber_formula():
    a, b = torch.randn(5, 7, dtype=torch.float64) * 3, torch.randn(5, 7, dtype=torch.float64)
    x = (a - b).abs()
    for beta in (0.5, 2.0):
        elementwise = torch.where(x < beta, x ** 2 / (2 * beta), x - beta / 2)
        torch.testing.assert_close(smooth_l1(a, b, beta), elementwise.mean(dim=1), rtol=1e-12, atol=0)
        torch.testing.assert_close(smooth_l1(a, b, beta, reduce="sum", scale=1 / math.sqrt(7)),
                                   elementwise.sum(dim=1) / math.sqrt(7), rtol=1e-12, atol=0)
        torch.testing.assert_close(smooth_l1(a, b, beta), torch.nn.functional.smooth_l1_loss(
            a, b, beta=beta, reduction="none").mean(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(smooth_l1(a, b, 0.0), x.mean(dim=1), rtol=1e-12, atol=0)  # β = 0: L1
    with pytest.raises(ValueError, match="beta must be >= 0"):
        smooth_l1(a, b, -1.0)


def test_token_norms_and_the_block_average():
    tokens = torch.randn(3, 10, 6, dtype=torch.float64) * 4 + 2
    mean_t, var_t = tokens.mean(dim=1, keepdim=True), tokens.var(dim=1, unbiased=False, keepdim=True)
    instance = (tokens - mean_t) / torch.sqrt(var_t + 1e-5)
    torch.testing.assert_close(normalize_tokens(tokens, "instance"), instance, rtol=1e-10, atol=1e-12)
    mean_d, var_d = tokens.mean(dim=2, keepdim=True), tokens.var(dim=2, unbiased=False, keepdim=True)
    torch.testing.assert_close(normalize_tokens(tokens, "layer"), (tokens - mean_d) / torch.sqrt(var_d + 1e-5),
                               rtol=1e-10, atol=1e-12)
    other = torch.randn(3, 10, 6, dtype=torch.float64)
    average = (normalize_tokens(tokens, "instance") + normalize_tokens(other, "instance")) / 2
    torch.testing.assert_close(block_average([tokens, other]), normalize_tokens(average, "layer"))
    with pytest.raises(ValueError, match="one of instance, layer, none"):
        normalize_tokens(tokens, "batch")


def test_patch_pixels_are_maes_patchify_normalised_per_patch():
    images = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    p = 4
    # MAE's patchify: [N, C, h·p, w·p] -> [N, h·w, p·p·C], pixels of a patch row by row, channels last.
    expected = torch.einsum("nchpwq->nhwpqc", images.reshape(2, 3, 2, p, 3, p)).reshape(2, 6, p * p * 3)
    torch.testing.assert_close(patch_pixels(images, p, normalize=False), expected)
    mean, var = expected.mean(dim=-1, keepdim=True), expected.var(dim=-1, keepdim=True)  # unbiased, as MAE
    torch.testing.assert_close(patch_pixels(images, p), (expected - mean) / (var + 1e-6) ** 0.5)
    with pytest.raises(ValueError, match="not a whole number of 5 px patches"):
        patch_pixels(images, 5)


def _masks(hidden: torch.Tensor, counts: int, world_size: int) -> Masks:
    return Masks(hidden=hidden, predict=(hidden,), mode="replace", grid=(2, 4), counts=(counts,),
                 world_size=world_size)


def _outputs(rows_a: torch.Tensor, rows_b: torch.Tensor, masks: Masks) -> MaskedOutputs:
    return MaskedOutputs(views=[], masks=[masks], online=[], predictions=[[rows_a]], targets=[[rows_b]])


def test_the_energy_is_the_global_batchs_mean_when_processes_mask_unequal_numbers():
    hidden = torch.zeros(4, 8, dtype=torch.bool)
    hidden[0, :1] = hidden[1, :2] = hidden[2, :6] = hidden[3, :7] = True  # 3 on "process 0", 13 on "process 1"
    pred, target = torch.randn(4, 8, 5, dtype=torch.float64), torch.randn(4, 8, 5, dtype=torch.float64)
    energy = lambda a, b: (a - b).pow(2).mean(dim=-1)  # noqa: E731 - a per-row energy
    total = int(hidden.sum())
    one = masked_energy(energy, _outputs(pred[hidden], target[hidden], _masks(hidden, total, 1)))
    reference = (pred - target)[hidden].pow(2).mean(dim=-1).mean()
    torch.testing.assert_close(one, reference)
    # Each process divides its rows' sum by the global count / 2; DDP averages: the global mean.
    halves = [masked_energy(energy, _outputs(pred[rows][hidden[rows]], target[rows][hidden[rows]],
                                             _masks(hidden[rows], total, 2))) for rows in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, reference)
    # A mean per process would not be: its halves weigh the 3 and the 13 rows alike.
    local = [(pred - target)[rows][hidden[rows]].pow(2).mean(dim=-1).mean() for rows in (slice(0, 2), slice(2, 4))]
    assert abs(float((local[0] + local[1]) / 2 - reference)) > 1e-3


def test_errors_a_plugin_author_reads():
    hidden = torch.zeros(2, 8, dtype=torch.bool)
    hidden[:, :3] = True
    masks = _masks(hidden, 6, 1)
    with pytest.raises(ValueError, match="have no targets: add a functional that makes them"):
        masked_energy(lambda a, b: a.sum(-1), MaskedOutputs(views=[], masks=[masks], online=[],
                                                            predictions=[[torch.zeros(6, 2)]]))
    with pytest.raises(ValueError, match="6 prediction rows but 5 target rows"):
        masked_energy(lambda a, b: a.sum(-1), _outputs(torch.zeros(6, 2), torch.zeros(5, 2), masks))
    head = TokenLinearHead(4, 3)
    kept = Tokens(patches=torch.zeros(2, 5, 4), cls=None, grid=(2, 4))  # 3 of 8 dropped
    with pytest.raises(ValueError, match="the masker's mode is drop"):
        head.predict_tokens(kept, masks)


def test_token_linear_reads_the_predicted_positions_in_row_major_order():
    head = TokenLinearHead(4, 3).double()
    patches = torch.randn(2, 8, 4, dtype=torch.float64)
    hidden = torch.rand(2, 8) < 0.5
    [rows] = head.predict_tokens(Tokens(patches=patches, cls=None, grid=(2, 4)), _masks(hidden, 0, 1))
    expected = torch.cat([head.linear(patches[n, hidden[n]]) for n in range(2)])
    torch.testing.assert_close(rows, expected)


def test_masks_are_on_the_views_device_and_drop_keeps_equal_counts():
    masker = Masker("random", RandomOptions(ratio=0.5), patch_size=4)
    masks = masker(torch.zeros(3, 1, 8, 16), generator=torch.Generator().manual_seed(0))
    assert masks.grid == (2, 4) and masks.mode == "drop" and masks.hidden.device.type == "cpu"
    assert (masks.hidden.sum(dim=1) == 4).all() and masks.counts == (12,)


def test_the_report_shows_what_the_online_encoder_sees():
    from jef.tools.report.model import masked_display

    view = np.full((1, 1, 4, 8), 0.9)  # one grey image, 2 x 4 patches of 2 px
    hidden = torch.zeros(1, 8, dtype=torch.bool)
    hidden[0, 1] = True  # patch (0, 1): pixels [0:2, 2:4]
    target = torch.zeros(1, 8, dtype=torch.bool)
    target[0, 1] = True
    shown = masked_display(view, Masks(hidden=hidden, predict=(target,), mode="drop", grid=(2, 4), counts=(1,)))
    assert shown.shape == (1, 3, 4, 8)
    np.testing.assert_allclose(shown[0, :, 0:2, 2:4], np.array([0.675, 0.425, 0.425])[:, None, None] *
                               np.ones((3, 2, 2)))  # grey, tinted red: hidden and predicted
    np.testing.assert_allclose(shown[0, :, 2:, :], 0.9)  # seen patches unchanged


def test_a_masked_run_reports_its_masks(tmp_path):
    from jef.testing import tiny_run
    from jef.tools.report.model import model_figures

    from test_maskers import MASKED

    tiny_run({**MASKED, "eval": {"knn": {"enabled": False}}}, steps=1, run_dir=tmp_path / "run")
    figures = model_figures(tmp_path / "run", plugins=load_plugins(), images=2, max_points=32, queries=2)
    assert figures.note is None, figures.note
    assert "each beside its masks" in figures.details["views"] and figures.pngs["views"].startswith(b"\x89PNG")
