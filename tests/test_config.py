from dataclasses import replace

import pytest

from danie_nnunet.config import (ABLATION_SWITCHES, DANIE_L, DANIE_S, DANIEConfig, ablation_config,
                                 get_config)


def test_presets_match_the_paper():
    assert DANIE_S.sap_model == "maxvit_tiny_tf_224" and DANIE_S.dims == (64, 128, 256, 512)
    assert DANIE_L.sap_model == "maxvit_small_tf_224" and DANIE_L.dims == (96, 192, 384, 768)


def test_every_table_row_is_a_configuration():
    assert sorted(ABLATION_SWITCHES) == [f"{t}.{i}" for t, n in (("A", 5), ("B", 4), ("C", 5))
                                         for i in range(1, n + 1)]
    assert ablation_config("A.1").use_hap is False and ablation_config("A.2").use_sap is False
    unnamed = lambda row: replace(get_config(row), name="")  # noqa: E731
    assert unnamed("A.5") == unnamed("C.2")  # the paper's A.5 is C.2 (both 25.16 GFLOPs)
    assert unnamed("B.4") == unnamed("A.5")  # Table 6 ran on Table 5's add-fusion setting (B.4 = 82.97 = A.5)
    assert unnamed("C.5") == replace(DANIE_L, name="")
    assert get_config("S/C.1").dims == DANIE_S.dims and get_config("S/C.1").stream_fusion == "concat"


def test_round_trip_through_dict():
    cfg = get_config("C.1")
    assert DANIEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, message", [
    (dict(stream_fusion="mul"), "stream_fusion"),
    (dict(use_sap=False, use_hap=False), "at least one"),
    (dict(use_sap=False), "use_es needs the SAP stream"),
    (dict(use_es=False, use_eh=False, stream_fusion="concat", jp_merge="add"), "jp_merge='add'"),
    (dict(hap_depths=(1, 0, 1, 1)), "hap_depths"),
])
def test_invalid_configurations_are_refused_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        DANIEConfig(**bad)


def test_unknown_names_list_what_exists():
    with pytest.raises(KeyError, match="A.1"):
        get_config("XL")
    with pytest.raises(ValueError, match="unknown DANIEConfig fields"):
        DANIEConfig.from_dict({"dims": [1, 2, 3, 4], "colour": "red"})
