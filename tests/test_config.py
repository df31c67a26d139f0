from __future__ import annotations

import pytest

from remask.config import PRESETS, RunConfig, TrainConfig, apply_overrides
from remask.errors import RemaskError


def test_overrides_coerce_strings_to_field_types():
    cfg = apply_overrides(RunConfig(), {"train.lr": "1e-3", "model.causal": "true", "train.time_budget": "none",
                                        "model.n_kv_head": "2", "train.schedule": "wsd"})
    assert cfg.train.lr == 1e-3 and cfg.model.causal is True and cfg.train.time_budget is None
    assert cfg.model.n_kv_head == 2 and cfg.train.schedule == "wsd"


@pytest.mark.parametrize("overrides,match", [
    ({"train.nope": "1"}, "unknown option train.nope"),
    ({"bogus.lr": "1"}, "unknown option"),
    ({"train.lr": "fast"}, "expects float"),
    ({"train.schedule": "linear"}, "must be one of"),
    ({"train.batch_size": "10", "train.micro_batch_size": "4"}, "multiple of"),
])
def test_bad_overrides_raise_clear_errors(overrides, match):
    with pytest.raises(RemaskError, match=match):
        apply_overrides(RunConfig(), overrides)


def test_round_trip_through_dict_and_presets_are_valid():
    for make in PRESETS.values():
        cfg = make()
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(batch_size=8).micro_batch_size == 8
    # A micro-batch that followed the batch size keeps following it; an explicit one stays.
    assert apply_overrides(RunConfig(), {"train.batch_size": "4"}).train.micro_batch_size == 4
    cfg = apply_overrides(RunConfig(), {"train.batch_size": "32", "train.micro_batch_size": "8"})
    assert apply_overrides(cfg, {"train.batch_size": "64"}).train.micro_batch_size == 8


def test_derived_fields_follow_their_source_unless_set():
    """A preset's n_kv_head (= n_head) and ffn_hidden (from d_model) were materialised on construction;
    overriding n_head or d_model must carry them along, and an explicit value must still win."""
    small = PRESETS["small"]()
    wide = apply_overrides(small, {"model.d_model": "384", "model.n_head": "8"})
    assert (wide.model.n_kv_head, wide.model.ffn_hidden) == (8, 1024)
    gqa = apply_overrides(small, {"model.n_kv_head": "2"})
    assert (gqa.model.n_head, gqa.model.n_kv_head, gqa.model.ffn_hidden) == (small.model.n_head, 2,
                                                                      small.model.ffn_hidden)
    fixed = apply_overrides(apply_overrides(small, {"model.ffn_hidden": "100"}), {"model.d_model": "384"})
    assert fixed.model.ffn_hidden == 100
    assert apply_overrides(small, {"train.batch_size": "32"}).train.micro_batch_size == 32
