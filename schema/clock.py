"""The SQL for "now": the caller's clock when a test passes one, else the database's.

Its own module so that modules the queue builds on (the reports, the outbox) can use it
without importing the queue.
"""

from __future__ import annotations

# `now` as a parameter, or the database's clock when the caller passes None.
NOW = "COALESCE(%(now)s::timestamptz, now())"
