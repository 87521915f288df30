"""The engine's parts, one job each; :class:`observer_core.engine.Engine` owns them.

- ``instance``: a running component (:class:`Instance`) and :func:`fail`, the one place an
  instance's error is logged and counted;
- ``dispatch``: :class:`Dispatcher`, the ingest path (``emit``/``submit``, group commit,
  ack-holding sinks, the pumps of the other op sinks);
- ``cycles``: :class:`Cycles` (the cycle loop, polls, analyzers and their run notes) and
  :class:`Publisher` (findings to the sinks that accept them);
- ``introspect``: :class:`Introspection`, what ``/health``, ``/stats``, ``/ready`` and
  ``/metrics`` show;
- ``core``: :class:`Engine`, which builds the instances and runs their lifecycle.

Private to the core: plugins and tools import :mod:`observer_core.engine`.
"""
