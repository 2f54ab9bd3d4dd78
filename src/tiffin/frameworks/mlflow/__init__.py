"""``tiffin.mlflow``: MLflow models, imported from any model URI MLflow understands.

Format: the MLflow model directory, unchanged, in the folder :data:`MLFLOW_MODEL_FOLDER`
(``mlflow_model/``: ``MLmodel``, ``requirements.txt``, ``conda.yaml``, data, artifacts).
``model.yaml`` records

* ``options.flavor``: how the model is run. ``None`` (default) loads the ``python_function``
  flavor, exact MLflow semantics; ``"native"`` the best native flavor tiffin supports;
  or a flavor name from :data:`NATIVE_FLAVORS`. ``options.native_flavor`` is the native flavor
  that ``"native"`` resolved to at import time (``None`` for pyfunc).
* ``context.mlflow``: what MLflow says about the model: the MLflow version that wrote it, its
  flavors, signature (input/output schema), run id, logged-model id, and the URI it came from.
* ``context.framework_versions.mlflow``: the MLflow version that imported it.

Use :func:`load_model` for the pyfunc (or, with ``flavor=``, the native object) and
:func:`load_native` for the native object of a model imported with a native flavor.
"""

from tiffin.frameworks.mlflow.importing import import_model
from tiffin.frameworks.mlflow.loading import (
    MLFLOW_MODEL_FOLDER,
    MODULE,
    NATIVE_FLAVORS,
    get,
    load_model,
    load_native,
)
from tiffin.frameworks.mlflow.requirements import version_mismatches
from tiffin.frameworks.mlflow.runnable import get_runnable

__all__ = [
    "MLFLOW_MODEL_FOLDER",
    "MODULE",
    "NATIVE_FLAVORS",
    "get",
    "get_runnable",
    "import_model",
    "load_model",
    "load_native",
    "version_mismatches",
]
