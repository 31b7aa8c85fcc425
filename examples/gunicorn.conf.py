"""gunicorn settings for examples/gunicorn_app.py: gevent workers."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = "gevent"
workers = 1
accesslog = None
