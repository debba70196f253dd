"""The training-memory estimate with recomputation, and the planner that recomputes as little as fits (issue 4)."""
import pytest
import torch

from danie_nnunet.config import get_config
from danie_nnunet.memory import (COMPILED_SHARE, _estimate, _meta_network, _Profile, _profiles, budget_note,
                                 compiled_share, estimate_training_memory, plan_recompute, trace_compiled_share)
from danie_nnunet.recompute import DEFAULT_SEGMENTS, recompute_candidates, set_recompute

PATCH, CHANS, CLASSES, BATCH = (64, 64), 1, 3, 4


@pytest.fixture(scope="module")
def extremes():
    plain = estimate_training_memory("S", PATCH, CHANS, CLASSES).total_gib(BATCH)
    everything = plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, budget_gib=0.0)
    return plain, everything


def test_a_budget_the_batch_fits_needs_no_recomputation(extremes):
    plain, _ = extremes
    plan = plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, budget_gib=plain + 0.01)
    assert plan.segments == [] and plan.fits and plan.extra_traffic == 0.0
    assert "no recomputation" in budget_note(plan)


def test_an_impossible_budget_recomputes_everything_and_says_it_will_not_fit(extremes):
    plain, everything = extremes
    assert not everything.fits and everything.estimate.total_gib(BATCH) < plain
    assert set(everything.segments) <= set(recompute_candidates(_meta_network("S", PATCH, CHANS, CLASSES,
                                                                              torch.bfloat16)))
    assert "expect out-of-memory errors" in budget_note(everything)


def test_a_budget_in_between_is_met_with_the_cheapest_few_segments(extremes):
    plain, everything = extremes
    budget = (plain + everything.estimate.total_gib(BATCH)) / 2
    plan = plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, budget)
    assert plan.fits and 0 < len(plan.segments) < len(everything.segments)
    assert 0 < plan.extra_traffic < everything.extra_traffic
    # the plan's estimate is the estimate of its segments; segments in forward order
    again = estimate_training_memory("S", PATCH, CHANS, CLASSES, recompute=plan.segments).total_gib(BATCH)
    assert again == pytest.approx(plan.estimate.total_gib(BATCH)) and again <= budget
    assert plan.segments == [s for s in everything.segments if s in plan.segments]
    # and none of them is superfluous: without any one of them the batch no longer fits
    params, _, (one, two) = _profiles("S", PATCH, CHANS, CLASSES, torch.bfloat16)
    for dropped in plan.segments:
        assert _estimate(params, one, two, [s for s in plan.segments if s != dropped]).total_gib(BATCH) > budget


@pytest.mark.parametrize("segments", [DEFAULT_SEGMENTS, ("sap.stages_0.blocks.1.conv", "hap.embed",
                                                         "joint_preservation.blocks.0")])
def test_what_the_estimate_keeps_is_what_torch_checkpoint_keeps(segments):
    # the estimate derives the recomputed network's kept tensors from a plain forward; a forward through torch's
    # checkpoint on the meta device must keep the same bytes: what it saves outside the segments plus their inputs
    net = _meta_network("S", PATCH, CHANS, CLASSES, torch.bfloat16)
    plain = _Profile(net, 2, CHANS, PATCH, torch.bfloat16, list(segments))
    recomputed = set(segments)
    kept = {k for k, stacks in plain.stacks.items() if any(not (s & recomputed) for s in stacks)}
    kept |= {k for s in segments for k in plain.inputs[s]}
    set_recompute(net, segments)
    real = _Profile(net, 2, CHANS, PATCH, torch.bfloat16, list(segments))
    real_kept = set(real.stacks) | {k for s in segments for k in real.inputs[s]}
    assert sum(real.size[k] for k in real_kept) == sum(plain.size[k] for k in kept) < sum(plain.size.values())


def test_info_prints_the_estimate_and_what_a_memory_budget_recomputes(capsys):
    from danie_nnunet.cli import main
    assert main(["info", "--variant", "S", "--size", "64", "--in-chans", "1", "--classes", "3", "--batch", "4",
                 "--memory-gib", "0.1"]) == 0
    out = capsys.readouterr().out
    for compiled in (False, True):
        total = estimate_training_memory("S", PATCH, CHANS, CLASSES, compiled=compiled).total_gib(BATCH)
        assert f"{'compiled' if compiled else 'eager'}, nnU" in out and f"= {total:.1f} GiB at batch 4" in out
    assert "with DANIE_memory_gib=0.1: recomputing" in out
    assert "recomputed segments: sap.stem" in out


def test_segment_names_are_resolved_as_set_recompute_resolves_them():
    # a stream the configuration switches off is skipped (A.1 has no HAP), a typo is an error, not a silent no-op
    without_hap = estimate_training_memory("A.1", PATCH, CHANS, CLASSES, recompute=["hap.embed"])
    assert without_hap == estimate_training_memory("A.1", PATCH, CHANS, CLASSES)
    with pytest.raises(ValueError, match="no submodule 'sap.stage_0'"):
        estimate_training_memory("S", PATCH, CHANS, CLASSES, recompute=["sap.stage_0"])


def test_compiled_the_estimate_keeps_its_share_per_slice_and_plans_for_it(extremes):
    eager = estimate_training_memory("S", PATCH, CHANS, CLASSES)
    compiled = estimate_training_memory("S", PATCH, CHANS, CLASSES, compiled=True)
    assert compiled.fixed_gib == eager.fixed_gib and compiled.per_slice_gib == COMPILED_SHARE * eager.per_slice_gib
    # a budget between the two: the compiled network fits without recomputation, the eager one does not
    budget = (eager.total_gib(BATCH) + compiled.total_gib(BATCH)) / 2
    plan = plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, budget, compiled=True)
    assert plan.fits and plan.segments == [] and plan.compiled and "GiB compiled, within" in budget_note(plan)
    assert plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, budget).segments
    # where even the compiled network needs recomputation, the segments are the eager plan's (an upper bound)
    tight = compiled.total_gib(BATCH) - 0.01
    fast, plain = (plan_recompute("S", PATCH, CHANS, CLASSES, BATCH, tight, compiled=c) for c in (True, False))
    assert fast.segments == plain.segments and fast.estimate == plain.estimate and fast.compiled
    assert "(estimated uncompiled; compiled, less)" in budget_note(fast) and "uncompiled" not in budget_note(plain)
    # the share only where it was measured; any other configuration keeps the eager estimate
    assert compiled_share("L") == compiled_share("S") == COMPILED_SHARE == compiled_share(
        get_config("L", head_upsample="interpolate"))
    assert compiled_share("A.3") == compiled_share(get_config("S", dcal=False)) == 1.0


def test_the_compiled_share_is_what_the_partitioner_keeps():
    # the constant stays on the safe side of the trace with the installed torch (about two minutes on a CPU)
    traced = trace_compiled_share("S", PATCH, CHANS, CLASSES)
    assert 0.5 < traced.share <= COMPILED_SHARE, traced
