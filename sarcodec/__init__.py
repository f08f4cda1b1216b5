"""sarcodec: learned compression for SAR imagery.

Python API (the CLI is a thin layer over it)::

    import sarcodec
    data = sarcodec.encode_array(array, quality=4)          # (bands, H, W) or (H, W) -> bytes
    restored, header = sarcodec.decode_array(data)
    sarcodec.encode_file("in.tif", "out.sarc", quality=4)
    sarcodec.decode_file("out.sarc", "out.tif")
"""
__version__ = "0.1.0"

from .codec import decode_array, decode_file, encode_array, encode_file, info  # noqa: E402
from .weights import load as load_model  # noqa: E402

__all__ = ["__version__", "encode_array", "decode_array", "encode_file", "decode_file", "info", "load_model"]
