"""IO descriptors: how an API's request body becomes its argument, and its result a response.

``import tiffin.io`` loads no numpy, pandas, Pillow or pydantic; each descriptor imports what
it needs when it is built or first used.
"""

from __future__ import annotations

from tiffin.io.base import IODescriptor
from tiffin.io.file import File, FileData
from tiffin.io.image import Image
from tiffin.io.json import JSON
from tiffin.io.multipart import Multipart
from tiffin.io.numpy import NumpyNdarray
from tiffin.io.pandas import PandasDataFrame
from tiffin.io.text import Text

__all__ = [
    "JSON",
    "File",
    "FileData",
    "IODescriptor",
    "Image",
    "Multipart",
    "NumpyNdarray",
    "PandasDataFrame",
    "Text",
]
