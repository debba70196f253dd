"""DANIE (Dual Attention Encoder with Joint Preservation) for nnU-Net v2.

The network (`danie_nnunet.network`) needs torch and timm only; the nnU-Net trainers live in
`danie_nnunet.trainers`. Imports are lazy so that `import danie_nnunet` stays cheap.
"""
__version__ = "0.1.0"

_LAZY = {
    "DANIE": "network", "create_danie": "network",
    "DANIEConfig": "config", "get_config": "config", "DANIE_S": "config", "DANIE_L": "config",
    "ABLATION_SWITCHES": "config", "ablation_config": "config",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'danie_nnunet' has no attribute {name!r}")


__all__ = sorted(_LAZY)
