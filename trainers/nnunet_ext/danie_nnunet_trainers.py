"""Re-exports the DANIE trainers for nnU-Net's external trainer lookup (`nnUNet_extTrainer`).

nnU-Net imports each file of this folder as a top-level module by its file name, so this file has a unique
name and only re-exports: the classes nnU-Net finds are the canonical `danie_nnunet.trainers` ones.
"""
from danie_nnunet.trainers import *  # noqa: F401,F403
