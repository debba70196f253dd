"""nnU-Net plans tooling for DANIE configurations (imports nnunetv2)."""
