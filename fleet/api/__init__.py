"""The fleet service's HTTP API: routes (spec.py), handlers (app.py), queries (queries.py), server
(server.py)."""
