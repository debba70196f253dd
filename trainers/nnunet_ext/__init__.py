# The folder nnU-Net's `nnUNet_extTrainer` points at; see danie_nnunet_trainers.py.
