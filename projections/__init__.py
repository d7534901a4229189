"""Projections: MongoDB views built from the ``task-events`` topic.

* :mod:`projections.folds` - the pure part: the views as folds ``(document, event) -> document``.
* :mod:`projections.store` - the storage adapter: loads, folds and writes batches (projector and
  replay alike), from one capability probe of the server.
* :mod:`projections.projector` - the live consumer group, lag, indexes.
* :mod:`projections.replay` - rebuilds the views into fresh collections and switches to them.
* :mod:`projections.retention` - TTL index or, on FerretDB, a retention sweeper.
* :mod:`projections.read` - what readers need: the live collection names, tenant statistics.
"""

from projections.read import CollectionNames, active_collections, tenant_stats

__all__ = ["CollectionNames", "active_collections", "tenant_stats"]
