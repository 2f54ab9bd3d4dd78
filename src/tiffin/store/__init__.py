"""The store layer: versioned entries on disk, the models in them, and where models come from.

* :mod:`~tiffin.store.versioned` -- a generic versioned store (``NAME/VERSION/`` plus
  ``latest``; staging and rename under a lock);
* :mod:`~tiffin.store.model_info` -- ``model.yaml`` and the checks on what it records;
* :mod:`~tiffin.store.models` -- :class:`~tiffin.store.models.Model` and the functions behind
  ``tiffin.models``;
* :mod:`~tiffin.store.tiffins` -- built tiffins (``tiffin build``'s output) in the same kind
  of store, and :class:`~tiffin.store.tiffins.BuiltTiffin`;
* :mod:`~tiffin.store.archive` -- export and import of one-file archives of a model or a
  built tiffin;
* :mod:`~tiffin.store.uris` and :mod:`~tiffin.store.fetch` -- MLflow model URIs to a local
  MLflow model directory.

May import: ``tag``, ``config``, ``batch_settings``, ``exceptions`` (and MLflow inside
functions). One documented exception: ``Model.to_runner()`` reaches the framework and runner
layers at call time, because a model's runner is built by the framework that saved it.
"""

from tiffin.store.versioned import Entry, Store, home, load_yaml_file

__all__ = ["Entry", "Store", "home", "load_yaml_file"]
