"""The REST API: a thin HTTP shell that validates commands, puts them on Kafka and reads the views.

* :mod:`api.app` - the application factory (:func:`api.app.create_app`).
* :mod:`api.settings` - ``SCHED_*`` settings of the API process.
* :mod:`api.auth` - bearer JWT (HS256 / RS256), roles and the caller's tenant.
* :mod:`api.errors` - the one error hierarchy and its RFC 9457 problem+json mapping.
* :mod:`api.bus` - the Kafka command producer.
* :mod:`api.queries` - reads of the MongoDB views (tenant-filtered, cursor pagination, waiting).
* :mod:`api.routes` - one router per resource.

Run it with ``python -m api``.
"""
