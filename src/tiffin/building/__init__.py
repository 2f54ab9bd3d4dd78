"""The building layer: ``tiffin build``, a tiffinfile to a self-contained built tiffin.

* :mod:`~tiffin.building.tiffinfile` -- ``tiffinfile.yaml``: its keys, checked (pydantic), and
  ``$VAR`` expansion in its paths;
* :mod:`~tiffin.building.builder` -- the build: import the service once, collect files and
  models, write the built tiffin into the store (:mod:`tiffin.store.tiffins`);
* :mod:`~tiffin.building.files` -- which files of the build context go into ``src/``
  (gitignore-style patterns, ``.tiffinignore``);
* :mod:`~tiffin.building.requirements` and :mod:`~tiffin.building.lock` --
  ``env/python/requirements.txt``, pinned by pip's resolver with ``lock_packages``;
* :mod:`~tiffin.building.dockerfile` -- ``env/docker/Dockerfile``;
* :mod:`~tiffin.building.record` -- what ``tiffin.yaml`` records of the service, and the README.

Built tiffins in the store, their archives and serving them are the store's
(:mod:`tiffin.store.tiffins`, :mod:`tiffin.store.archive`) and the process layer's
(:mod:`tiffin.process.targets`): ``tiffin serve`` needs none of this.

May import: the process layer (to import the service as ``tiffin serve`` does, and to run pip)
and everything below it.
"""

__all__: list[str] = []
