"""One trainer per row of the paper's ablation Tables 5, 6 and 7 (spec §4), on DANIE-L like the paper.

Each row is a configuration in `danie_nnunet.config.ABLATION_SWITCHES`; its trainer only names it, so
`nnUNetv2_train DATASET 2d FOLD -tr DANIETrainer_C3_EH_Add` reads like the table. Names follow
`DANIETrainer_<row>_<the table's description>`; `danie_nnunet.ablation_table.ABLATION_TRAINERS` lists them
for the results collector. Everything else (recipe, schedule, loss) is DANIETrainer's.
"""
from __future__ import annotations

from .danie_trainer import DANIETrainer


# Table 5: Dual Attention Encoder, all rows with element-wise addition for fusion (A.5 = C.2)
class DANIETrainer_A1_noHAP(DANIETrainer):
    """A.1 DANIE w/o hierarchical-attention: SAP stream only."""

    danie_variant = "A.1"


class DANIETrainer_A2_noSAP(DANIETrainer):
    """A.2 DANIE w/o self-attention: HAP stream only."""

    danie_variant = "A.2"


class DANIETrainer_A3_noSpatialAtt(DANIETrainer):
    """A.3 DANIE w/o spatial att (Eq. 3 off in the hierarchical attention)."""

    danie_variant = "A.3"


class DANIETrainer_A4_noChannelAtt(DANIETrainer):
    """A.4 DANIE w/o channel att (Eq. 2 off in the hierarchical attention)."""

    danie_variant = "A.4"


class DANIETrainer_A5_DAE_Add(DANIETrainer):
    """A.5 DANIE: the full Dual Attention Encoder with add fusion (the same network as C.2)."""

    danie_variant = "A.5"


# Table 6: order of the attentions in hierarchical attention, with and without dynamic calibration (Eq. 4-5),
# on Table 5's add-fusion setting (B.4 = A.5 = C.2)
class DANIETrainer_B1_SpatialChannel_noDcal(DANIETrainer):
    """B.1 Spatial + Channel, no Dcal."""

    danie_variant = "B.1"


class DANIETrainer_B2_SpatialChannel_Dcal(DANIETrainer):
    """B.2 Spatial + Channel, Dcal."""

    danie_variant = "B.2"


class DANIETrainer_B3_ChannelSpatial_noDcal(DANIETrainer):
    """B.3 Channel + Spatial, no Dcal."""

    danie_variant = "B.3"


class DANIETrainer_B4_ChannelSpatial_Dcal(DANIETrainer):
    """B.4 Channel + Spatial, Dcal (the paper's choice; the same network as A.5 and C.2)."""

    danie_variant = "B.4"


# Table 7: fusion of the two streams (Eq. 10-11)
class DANIETrainer_C1_ConcatRes(DANIETrainer):
    """C.1 Concat + Res."""

    danie_variant = "C.1"


class DANIETrainer_C2_Add(DANIETrainer):
    """C.2 Add (the same network as A.5)."""

    danie_variant = "C.2"


class DANIETrainer_C3_EH_Add(DANIETrainer):
    """C.3 EH + Add."""

    danie_variant = "C.3"


class DANIETrainer_C4_ES_Add(DANIETrainer):
    """C.4 ES + Add."""

    danie_variant = "C.4"


class DANIETrainer_C5_JointPreservation(DANIETrainer):
    """C.5 Joint Preservation (the full DANIE-L)."""

    danie_variant = "C.5"


ABLATION_TRAINER_CLASSES = [
    DANIETrainer_A1_noHAP, DANIETrainer_A2_noSAP, DANIETrainer_A3_noSpatialAtt, DANIETrainer_A4_noChannelAtt,
    DANIETrainer_A5_DAE_Add, DANIETrainer_B1_SpatialChannel_noDcal, DANIETrainer_B2_SpatialChannel_Dcal,
    DANIETrainer_B3_ChannelSpatial_noDcal, DANIETrainer_B4_ChannelSpatial_Dcal, DANIETrainer_C1_ConcatRes,
    DANIETrainer_C2_Add, DANIETrainer_C3_EH_Add, DANIETrainer_C4_ES_Add, DANIETrainer_C5_JointPreservation]
