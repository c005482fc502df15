"""The jigsaw's permutation set: every permutation, the greedy choice of Algorithm 1, its minimal distance."""

from __future__ import annotations

import itertools

import pytest
import torch
from jef_plugin_pretext.jigsaw import all_permutations, minimal_distance, permutation_set


def _hamming(p, q) -> int:
    return sum(a != b for a, b in zip(p, q, strict=True))


def _brute_force_greedy(count: int, tiles: int, first: int, criterion: str) -> list[tuple[int, ...]]:
    """Algorithm 1 in plain Python: the next permutation maximises the min (or sum) distance to the chosen."""
    pool = list(itertools.permutations(range(tiles)))
    chosen = [pool[first]]
    while len(chosen) < count:
        aggregate = min if criterion == "min" else sum
        scores = [(aggregate(_hamming(p, c) for c in chosen), -i) for i, p in enumerate(pool) if p not in chosen]
        best = max(scores)
        chosen.append(pool[-best[1]])
    return chosen


def test_every_permutation_in_lexicographic_order():
    for n in (1, 3, 5):
        assert all_permutations(n).tolist() == [list(p) for p in itertools.permutations(range(n))]
    assert all_permutations(9).shape == (362880, 9)


@pytest.mark.parametrize("criterion", ["min", "mean"])
def test_the_greedy_choice_is_algorithm_1(criterion):
    perms, _ = permutation_set(12, tiles=5, seed=3, criterion=criterion)
    first = all_permutations(5).long().tolist().index(perms[0].tolist())
    want = _brute_force_greedy(12, 5, first, criterion)
    assert [tuple(p) for p in perms.tolist()] == want


def test_the_minimal_hamming_distance_is_the_brute_force_one():
    perms, d_min = permutation_set(100)
    assert perms.shape == (100, 9) and perms.dtype == torch.long
    rows = perms.tolist()
    brute = min(_hamming(p, q) for p, q in itertools.combinations(rows, 2))
    assert d_min == brute == minimal_distance(perms) == 6  # measured: 6 for P = 100 (seed 0)
    assert len({tuple(r) for r in rows}) == 100  # distinct
    assert all(sorted(r) == list(range(9)) for r in rows)  # permutations
    # Max-min spreads the set further than the sum of Algorithm 1 as printed, whose set has neighbours at 2.
    assert permutation_set(30, criterion="mean")[1] == 2 < permutation_set(30)[1]


def test_the_set_is_deterministic_from_its_seed():
    a, _ = permutation_set(10, seed=1)
    b, _ = permutation_set(10, seed=1)
    c, _ = permutation_set(10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a[0, 0] = 99  # a copy: the cached set is untouched
    assert permutation_set(10, seed=1)[0][0, 0] != 99


def test_clear_errors():
    with pytest.raises(ValueError, match=r"count must be in \[2, 24\]"):
        permutation_set(25, tiles=4)
    with pytest.raises(ValueError, match="criterion must be 'min' or 'mean'"):
        permutation_set(10, criterion="max")
