"""The runner layer: how a model's methods are called, batched, and sent between processes.

* :mod:`~tiffin.runner.runnable` -- ``tiffin.Runnable``, the class whose marked methods run;
* :mod:`~tiffin.runner.runner` -- ``tiffin.Runner`` and ``runner.<method>``, with a backend:
  :mod:`~tiffin.runner.local` (loaded in this process) or :mod:`~tiffin.runner.remote`
  (in runner processes, reached over :mod:`~tiffin.runner.wire`; their side is
  :mod:`~tiffin.runner.runner_server`);
* :mod:`~tiffin.runner.batching` -- the adaptive dispatcher (pure asyncio, takes a clock):
  its queue (:mod:`~tiffin.runner.queueing`), its hold decision (:mod:`~tiffin.runner.hold`)
  and how a failed batch finds the calls at fault while the model keeps serving
  (:mod:`~tiffin.runner.isolation`); :mod:`~tiffin.runner.coalescer` merges an API worker's
  calls per event-loop turn; both merge and split through :mod:`~tiffin.runner.merging` and
  :mod:`~tiffin.runner.containers`;
* :mod:`~tiffin.runner.stats` -- what a dispatcher counts;
* :mod:`~tiffin.runner.devices` -- a runner's device setting resolved against the GPUs this
  process sees, and the GPU memory it holds (torch inside functions only).

May import: the store layer, ``tag``, ``config``, ``batch_settings``, ``device_settings``,
``exceptions``. Nothing
here imports HTTP, process management or an ML framework at module level.
"""

__all__: list[str] = []
