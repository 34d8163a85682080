"""Deployment configuration: settings from the environment and gunicorn's config file."""
