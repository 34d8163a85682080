"""The HTTP server side, under gunicorn: the worker class, request framing, reload handover,
gunicorn's logger. gunicorn's master imports this package; it imports nothing from ``app/``.
"""
