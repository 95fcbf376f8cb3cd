"""The fused LM head + temperature head + loss under its first public name; it lives in `tempnet.losses.fused`."""

from tempnet.losses.fused import CHUNK_ELEMENTS, default_chunk_size, linear_tempnet_dro_loss

__all__ = ["linear_tempnet_dro_loss", "default_chunk_size", "CHUNK_ELEMENTS"]
