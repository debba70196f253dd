"""nnU-Net v2 trainers for DANIE (imports nnunetv2). The stock CLIs find them through `nnUNet_extTrainer`:

    export nnUNet_extTrainer=$(danie-nnunet ext-path)
"""
from .danie_trainer import DANIETrainer, fit_plans_to_danie, unwrap_network
from .variants import (DANIETrainer_5epochs, DANIETrainer_50epochs, DANIETrainer_250epochs, DANIETrainer_S,
                       DANIETrainer_S_4epochs_25it, DANIETrainer_S_5epochs, DANIETrainer_S_50epochs,
                       DANIETrainer_S_250epochs)

TRAINERS = [DANIETrainer, DANIETrainer_S, DANIETrainer_5epochs, DANIETrainer_50epochs, DANIETrainer_250epochs,
            DANIETrainer_S_5epochs, DANIETrainer_S_50epochs, DANIETrainer_S_250epochs, DANIETrainer_S_4epochs_25it]
__all__ = [t.__name__ for t in TRAINERS] + ["TRAINERS", "fit_plans_to_danie", "unwrap_network"]
