"""custody: governed, sealed, ledgered copies of machine-learning model weights.

Programs read tensors without plaintext on disk through `custody.open_safetensors`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["open_safetensors"]


def __getattr__(name: str):  # noqa: ANN202
    if name == "open_safetensors":  # imported lazily: the CLI should not pay for NumPy at start-up
        from custody.library import open_safetensors

        return open_safetensors
    raise AttributeError(name)
