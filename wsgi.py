"""The WSGI entry point: ``gunicorn -c config/gunicorn.conf.py wsgi:app``."""

from app import create_app, logs

app = create_app()
logs.configure(app.config["CONFHOOK_LOG_FORMAT"])
