"""Deployment: nginx in front of gunicorn (nginx.py renders nginx.conf.template)."""
