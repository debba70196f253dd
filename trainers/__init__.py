"""nnU-Net v2 trainers for DANIE (imports nnunetv2). The stock CLIs find them through `nnUNet_extTrainer`:

    export nnUNet_extTrainer=$(danie-nnunet ext-path)
"""
from .ablations import (ABLATION_TRAINER_CLASSES, DANIETrainer_A1_noHAP, DANIETrainer_A2_noSAP,
                        DANIETrainer_A3_noSpatialAtt, DANIETrainer_A4_noChannelAtt, DANIETrainer_A5_DAE_Add,
                        DANIETrainer_B1_SpatialChannel_noDcal, DANIETrainer_B2_SpatialChannel_Dcal,
                        DANIETrainer_B3_ChannelSpatial_noDcal, DANIETrainer_B4_ChannelSpatial_Dcal,
                        DANIETrainer_C1_ConcatRes, DANIETrainer_C2_Add, DANIETrainer_C3_EH_Add,
                        DANIETrainer_C4_ES_Add, DANIETrainer_C5_JointPreservation)
from .danie_trainer import DANIETrainer, fit_plans_to_danie, unwrap_network
from .variants import (DANIETrainer_5epochs, DANIETrainer_50epochs, DANIETrainer_250epochs, DANIETrainer_S,
                       DANIETrainer_S_4epochs_25it, DANIETrainer_S_5epochs, DANIETrainer_S_50epochs,
                       DANIETrainer_S_250epochs, DANIETrainer_S_recompute, DANIETrainer_recompute)

TRAINERS = [DANIETrainer, DANIETrainer_S, DANIETrainer_5epochs, DANIETrainer_50epochs, DANIETrainer_250epochs,
            DANIETrainer_S_5epochs, DANIETrainer_S_50epochs, DANIETrainer_S_250epochs, DANIETrainer_S_4epochs_25it,
            DANIETrainer_recompute, DANIETrainer_S_recompute, *ABLATION_TRAINER_CLASSES]
__all__ = [t.__name__ for t in TRAINERS] + ["TRAINERS", "ABLATION_TRAINER_CLASSES", "fit_plans_to_danie",
                                            "unwrap_network"]
