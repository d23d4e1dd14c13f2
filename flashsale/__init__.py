"""The flash-sale service: create_app() builds the WSGI app from the settings, the blueprints of
routes/, the command line (cli.py) and the error answers (errors.py)."""
from flask import Flask, request


class FlashSale(Flask):
    def make_default_options_response(self):
        """OPTIONS names the allowed methods in `Allow`, with no body to describe."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.pop("Content-Type", None)
        return response


def create_app(settings=None, fast_path=True):
    """The WSGI app. Without `settings`, the process's own (settings.load()). `fast_path=False`
    leaves POST /buy_ticket to Flask's dispatch, which answers the same bytes, more slowly (the
    tests compare the two). The modules are imported here, as in the Flask tutorial, so that
    `python -m flashsale.settings` loads no more than the settings."""
    import db
    from flashsale import auth, cli, metrics, observe
    from flashsale import settings as configuration
    from flashsale.answers import response
    from flashsale.errors import answer_for
    from flashsale.routes import items, operations, purchases, webhooks
    from flashsale.routes.fast_path import FastPath
    from flashsale.routes.inputs import MAX_BODY_BYTES, valid_user_id

    settings = settings or configuration.load_or_exit()
    app = FlashSale(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SETTINGS"] = settings
    app.config["VERIFIER"] = auth.verifier(settings, valid_user_id)  # None in open mode
    db.init_app(app, metrics.db_event)
    cli.init_app(app)  # flask --app app db ..., sale ...
    if fast_path:
        app.wsgi_app = FastPath(app.wsgi_app, app.config["VERIFIER"])
    observe.install(app, settings, db.pop_pool_stats)  # around the fast path: it observes every answer
    for blueprint in (purchases.bp, items.bp, operations.bp, webhooks.bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(Exception)
    def handle_error(error):
        """Every error, a route's Problem and werkzeug's 404 alike, as errors.answer_for says."""
        return response(answer_for(error, request.environ))

    return app
