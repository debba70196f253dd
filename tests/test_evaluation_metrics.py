"""Metrics against analytic cases (discs and spheres at a known offset, concentric discs), against an independent
brute-force implementation (explicit neighbour test + scipy cdist) and scikit-learn, and the two modes' edge cases."""
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, recall_score

from danie_nnunet.evaluation import metrics as M
from danie_nnunet.evaluation.protocols import class_summary, mean_over_cases, nnunet_case, paper_case


def ball(shape, centre, radius, spacing=None):
    spacing = spacing or (1.0,) * len(shape)
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def shifted_ball_theory(r, d, dim):
    """Continuous Dice, HD95 and ASD of two discs/spheres of radius r whose centres are d apart.

    The distance from a surface point at angle t (disc; uniform in t) or at u = cos t (sphere; uniform in u by
    Archimedes) to the other surface is |sqrt(r^2 + d^2 - 2 r d cos t) - r|, the same in both directions.
    """
    if dim == 2:
        cos = np.cos(np.linspace(0, np.pi, 400001))
        overlap = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
        dice = overlap / (math.pi * r * r)
    else:
        cos = np.linspace(-1, 1, 400001)
        h = r - d / 2
        dice = 2 * (math.pi * h * h * (3 * r - h) / 3) / (4 / 3 * math.pi * r ** 3)
    dist = np.abs(np.sqrt(r * r + d * d - 2 * r * d * cos) - r)
    return dice, float(np.percentile(dist, 95)), float(dist.mean())


def scores(a, b, spacing=None):
    c = M.confusion(a, b)
    d_ab, d_ba = M.surface_distances(a, b, spacing)
    return M.dice(c), M.hd95(d_ab, d_ba), M.assd(d_ab, d_ba)


@pytest.mark.parametrize("r,d", [(20, 6), (30, 8)])
def test_two_discs_at_a_known_offset(r, d):
    a, b = ball((128, 128), (60, 60), r), ball((128, 128), (60, 60 + d), r)
    dice, hd95, asd = scores(a, b)
    t_dice, t_hd95, t_asd = shifted_ball_theory(r, d, 2)
    assert dice == pytest.approx(t_dice, abs=0.005)
    # the surface voxels of a digital disc sit up to half a voxel from the continuous circle
    assert hd95 == pytest.approx(t_hd95, abs=0.5) and asd == pytest.approx(t_asd, abs=0.5)


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (1.0, 1.0, 1.0)])
def test_two_spheres_at_a_known_offset_in_mm(spacing):
    r, d = 10.0, 4.0  # mm
    shape = tuple(int(40 / s) for s in spacing)
    a, b = ball(shape, (15, 20, 20), r, spacing), ball(shape, (15 + d, 20, 20), r, spacing)
    dice, hd95, asd = scores(a, b, spacing)
    t_dice, t_hd95, t_asd = shifted_ball_theory(r, d, 3)
    assert dice == pytest.approx(t_dice, abs=0.01)
    assert hd95 == pytest.approx(t_hd95, abs=0.5 * max(spacing)) and asd == pytest.approx(t_asd, abs=0.5 * max(spacing))


def test_concentric_discs_and_exact_properties():
    a, b = ball((96, 96), (48, 48), 20), ball((96, 96), (48, 48), 25)
    dice, hd95, asd = scores(a, b)
    assert dice == pytest.approx(2 * 20 ** 2 / (20 ** 2 + 25 ** 2), abs=0.005)
    assert hd95 == pytest.approx(5, abs=0.5) and asd == pytest.approx(5, abs=0.5)
    assert scores(a, a) == (1.0, 0.0, 0.0)
    # distances scale exactly with a uniform spacing, and ASD is symmetric
    _, hd95_2, asd_2 = scores(a, b, (2.5, 2.5))
    assert hd95_2 == pytest.approx(2.5 * hd95) and asd_2 == pytest.approx(2.5 * asd)
    assert scores(b, a)[1:] == pytest.approx((hd95, asd))


def brute_force_distances(a, b, spacing):
    """Independent implementation: surface = a voxel with a face neighbour outside (array border = outside), found by
    shifting a zero-padded copy; distances between all surface voxel pairs with cdist."""
    def surface(mask):
        padded = np.pad(mask, 1)
        outside = np.zeros_like(mask)
        centre = tuple(slice(1, -1) for _ in mask.shape)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                outside |= ~np.roll(padded, step, axis=axis)[centre]
        return mask & outside
    pa = np.argwhere(surface(a)) * np.asarray(spacing)
    pb = np.argwhere(surface(b)) * np.asarray(spacing)
    pairwise = cdist(pa, pb)
    return pairwise.min(1), pairwise.min(0)


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 14, 12) if seed % 2 else (23, 19)
    spacing = tuple(rng.uniform(0.4, 3.0, len(shape)))
    a = rng.random(shape) < 0.35  # ragged shapes touching the array border
    b = np.roll(a, 2, axis=-1) ^ (rng.random(shape) < 0.1)
    d_ab, d_ba = M.surface_distances(a, b, spacing)
    e_ab, e_ba = brute_force_distances(a, b, spacing)
    assert np.allclose(np.sort(d_ab), np.sort(e_ab)) and np.allclose(np.sort(d_ba), np.sort(e_ba))
    assert M.hd95(d_ab, d_ba) == pytest.approx(np.percentile(np.concatenate([e_ab, e_ba]), 95))
    assert M.assd(d_ab, d_ba) == pytest.approx((e_ab.mean() + e_ba.mean()) / 2)
    c = M.confusion(a, b)  # overlap metrics against scikit-learn
    ref, pred = a.ravel(), b.ravel()
    tn, fp, fn, tp = confusion_matrix(ref, pred).ravel()
    assert (c.tp, c.fp, c.fn, c.tn) == (tp, fp, fn, tn)
    assert M.dice(c) == pytest.approx(f1_score(ref, pred)) and M.iou(c) == pytest.approx(jaccard_score(ref, pred))
    assert M.sensitivity(c) == pytest.approx(recall_score(ref, pred))
    assert M.specificity(c) == pytest.approx(recall_score(~ref, ~pred))


def test_cropping_keeps_distances_of_masks_on_the_array_border():
    a = np.zeros((30, 30), bool)
    a[:10, :10] = True  # touches the border: its edge voxels are surface
    b = np.zeros((30, 30), bool)
    b[5:15, 3:12] = True
    d_ab, d_ba = M.surface_distances(a, b, (1.0, 2.0))
    e_ab, e_ba = brute_force_distances(a, b, (1.0, 2.0))
    assert np.allclose(np.sort(d_ab), np.sort(e_ab)) and np.allclose(np.sort(d_ba), np.sort(e_ba))


def test_nnunet_mode_empty_structures():
    empty, blob = np.zeros((5, 8, 8), bool), ball((5, 8, 8), (2, 4, 4), 2)
    both_empty = nnunet_case(empty, empty, (1, 1, 1))
    assert all(math.isnan(both_empty[m]) for m in ("Dice", "IoU", "HD95", "ASD", "Sensitivity"))
    assert both_empty["Specificity"] == 1.0 and both_empty["Accuracy"] == 1.0
    missed, spurious = nnunet_case(blob, empty, (1, 1, 1)), nnunet_case(empty, blob, (1, 1, 1))
    for r in (missed, spurious):
        assert r["Dice"] == 0.0 and r["IoU"] == 0.0 and math.isinf(r["HD95"]) and math.isinf(r["ASD"])
    hit = nnunet_case(blob, blob, (3.0, 1.0, 1.0))
    assert hit["Dice"] == 1.0 and hit["HD95"] == 0.0
    summary = class_summary([both_empty, missed, spurious, hit], "nnunet")
    assert summary["Dice"] == pytest.approx(1 / 3)  # NaN left out: (0 + 0 + 1) / 3
    assert summary["HD95"] == 0.0  # the mean over the finite cases ...
    assert (summary["n_missed"], summary["n_spurious"], summary["n_both_empty"]) == (1, 1, 1)  # ... and the counts


def test_paper_mode_follows_transunet_edge_cases():
    empty = np.zeros((4, 16, 16), bool)
    a, b = ball((4, 16, 16), (1, 8, 8), 3), ball((4, 16, 16), (1, 8, 10), 3)
    zeros = dict(Dice=0, IoU=0, HD95=0, ASD=0)
    assert {k: paper_case(empty, empty)[k] for k in zeros} == zeros  # nothing there, nothing found: still 0
    assert {k: paper_case(a, empty)[k] for k in ("Dice", "HD95")} == dict(Dice=0, HD95=0)  # a missed organ
    assert {k: paper_case(empty, a)[k] for k in ("Dice", "IoU", "HD95", "ASD")} == dict(Dice=1, IoU=1, HD95=0, ASD=0)
    # otherwise voxel units, whatever the spacing: the same as the nnunet mode at spacing 1
    paper, honest = paper_case(a, b), nnunet_case(a, b, (1, 1, 1))
    assert all(paper[m] == pytest.approx(honest[m]) for m in ("Dice", "IoU", "HD95", "ASD"))
    assert nnunet_case(a, b, (5.0, 0.5, 0.5))["HD95"] != pytest.approx(paper["HD95"])
    assert mean_over_cases([0.0, 1.0, 0.5], "paper", "Dice") == 0.5
    assert mean_over_cases([float("nan"), 1.0, float("inf")], "nnunet", "HD95") == 1.0
