"""The flash-sale WSGI app, as gunicorn and `flask --app app` load it: flashsale.create_app()
with the settings of the environment and `.env`."""
from flashsale import create_app

app = create_app()
