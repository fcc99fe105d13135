"""The user's pruning choices are validated once, and every bad one is a UserError that says what to do."""

import pytest
import torch

from core.errors import UserError
from core.patterns import Pattern
from core.pruning.methods.sparsegpt import Options
from core.pruning.plan import PrunePlan
from core.compute import resolve_device


def test_a_pattern_sets_its_own_sparsity():
    assert PrunePlan.build(pattern="2:4").sparsity == 0.5
    assert PrunePlan.build(pattern="1:4").sparsity == 0.75
    assert PrunePlan.build().sparsity == 0.5 and PrunePlan.build().pattern == Pattern()


@pytest.mark.parametrize("kwargs,expected", [
    (dict(sparsity=1.0), r"outside \[0, 1\)"),
    (dict(sparsity=-0.1), r"outside \[0, 1\)"),
    (dict(method="obs"), "unknown method 'obs'"),
    (dict(pattern="4:4"), "0 < N < M"),
    (dict(pattern="2:4", sparsity=0.6), "conflicts with sparsity 0.6"),
    (dict(pattern="2:4", overrides=(("q_proj", 0.3),)), "overrides need the unstructured pattern"),
    (dict(overrides=(("q_proj", 1.2),)), "override q_proj=1.2"),
    (dict(pattern="4:8", method="sparsegpt", sparsegpt=Options(blocksize=12)), "multiple of M=8"),
    (dict(sparsegpt=Options(dampening=0)), "dampening 0 must be in"),
    (dict(device="tpu"), "unsupported device|unknown device"),
])
def test_bad_choices_are_user_errors(kwargs, expected):
    with pytest.raises(UserError, match=expected):
        PrunePlan.build(**kwargs)


def test_ignore_wins_over_overrides_and_first_override_wins():
    plan = PrunePlan.build(sparsity=0.5, ignore=("*.0.mlp.*",), overrides=(("*.mlp.*", 0.7), ("*up_proj", 0.2)))
    assert plan.target_for("model.layers.0.mlp.up_proj") is None
    assert plan.target_for("model.layers.1.mlp.up_proj") == 0.7
    assert plan.target_for("model.layers.1.self_attn.q_proj") == 0.5


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_a_glob_matching_no_layer_is_refused_naming_it():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    PrunePlan.build(ignore=("*q_proj",), overrides=("mlp.down_proj=0.3",)).check_globs(names)
    with pytest.raises(UserError, match=r"--ignore glob '\*qproj' matches none .* named like model\.layers\.0"):
        PrunePlan.build(ignore=("*qproj",)).check_globs(names)
    with pytest.raises(UserError, match=r"--override glob 'down_prj' matches none"):
        PrunePlan.build(overrides=("down_prj=0.3",)).check_globs(names)
