"""The ``chunkq`` command line: the ``up`` supervisor, the HTTP client and the one-shot
database commands. It sits above ``web``, ``workerd`` and ``schema``, which never import it."""
