"""``tiffin.models``: the model store's public API.

``tiffin.models.list(name=None)``, ``get(tag)``, ``delete(tag)``, ``export_model(tag, path)``,
``import_model(path)`` and ``create(name, module=...)`` (what framework modules save through).
The code lives in :mod:`tiffin.store`; this module is the names users write.
"""

from tiffin.store.archive import ARCHIVE_SUFFIX, export_model, import_model
from tiffin.store.model_info import MODEL_FILE, ModelInfo
from tiffin.store.models import (
    BrokenEntry,
    Model,
    ModelDraft,
    create,
    default_store,
    delete,
    get,
    scan,
)
from tiffin.store.models import list_models as list

__all__ = [
    "ARCHIVE_SUFFIX",
    "MODEL_FILE",
    "BrokenEntry",
    "Model",
    "ModelDraft",
    "ModelInfo",
    "create",
    "default_store",
    "delete",
    "export_model",
    "get",
    "import_model",
    "list",
    "scan",
]
