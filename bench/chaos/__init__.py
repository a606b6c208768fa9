"""The chaos soak (``python -m bench.chaos``): chunkq under faults, then every invariant.

The run is in ``soak``; its traffic in ``traffic`` (texts from ``texts``), its worker
processes in ``fleet``, the fault schedule in ``faults``, the invariants' SQL in
``invariants`` and their audit in ``audit``, the figures and the printout in ``report``.
"""
