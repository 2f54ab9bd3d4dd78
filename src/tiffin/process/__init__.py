"""The process layer: the only code that starts processes and owns sockets and signals.

* :mod:`~tiffin.process.serve` -- one process: a Service's app under uvicorn (``--reload``);
* :mod:`~tiffin.process.supervisor` and :mod:`~tiffin.process.workers` -- ``--workers N``:
  the supervisor, API worker processes and runner processes;
* :mod:`~tiffin.process.listeners` -- each API worker's listening socket;
* :mod:`~tiffin.process.targets` -- what a ``tiffin serve`` target names, by one rule: a
  service, or a built tiffin served from its own ``src/`` and ``models/``;
* :mod:`~tiffin.process.tools` -- running pip and a container engine to completion;
* :mod:`~tiffin.process.logs` and :mod:`~tiffin.process.uvicorn_glue` -- logging and uvicorn.

May import: the serving layer and everything below it.
"""

__all__: list[str] = []
