"""The io layer: how a request body becomes an API's argument, and its result a response.

* IO descriptors (``tiffin.io.NumpyNdarray``, ``PandasDataFrame``, ``JSON``, ``Text``,
  ``File``, ``Image``, ``Multipart``, and ``Rows``, what ``serve-model`` routes speak) on one
  contract (:mod:`tiffin.io.base`), described for clients by :mod:`tiffin.io.spec`;
* :mod:`tiffin.io.payloads` -- model payloads from JSON and files, and outputs as JSON, for
  ``serve-model`` and ``tiffin models predict``.

May import: ``exceptions`` only; numpy, pandas, Pillow and pydantic inside functions, so
``import tiffin.io`` loads none of them. Nothing here knows HTTP servers, runners or models.
"""

from __future__ import annotations

from tiffin.io.base import IODescriptor
from tiffin.io.file import File, FileData
from tiffin.io.image import Image
from tiffin.io.json import JSON
from tiffin.io.multipart import Multipart
from tiffin.io.numpy import NumpyNdarray
from tiffin.io.pandas import PandasDataFrame
from tiffin.io.rows import Rows
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
    "Rows",
    "Text",
]
