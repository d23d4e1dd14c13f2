"""The flash-sale WSGI app: settings, the blueprints of routes/, and how errors are answered."""
from flask import Flask, request
from werkzeug.exceptions import HTTPException

import auth
import cli
import db
import observe
import settings as configuration
from routes import fast_path, items, operations, purchases
from routes.answers import (INTERNAL_ERROR, MAX_BODY_BYTES, Problem, problem_response, response,
                            unauthorized_answer, valid_user_id)

HTTP_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                    413: "payload_too_large"}


class FlashSale(Flask):
    def make_default_options_response(self):
        """OPTIONS names the allowed methods in `Allow`, with no body to describe."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.pop("Content-Type", None)
        return response


def create_app(settings=None):
    """The WSGI app. Without `settings`, the process's own (settings.load())."""
    settings = settings or configuration.load_or_exit()
    db.configure(settings)
    app = FlashSale(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["flashsale.settings"] = settings
    app.extensions["flashsale.verifier"] = auth.verifier(settings, valid_user_id)  # None in open mode
    cli.init_app(app)  # flask --app app db ..., sale ...
    app.wsgi_app = fast_path.FastPath(app.wsgi_app, app.extensions["flashsale.verifier"])
    observe.install(app, settings, db.pop_pool_stats)  # around the fast path: it observes every answer
    for blueprint in (purchases.bp, items.bp, operations.bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(auth.Unauthorized)
    def handle_unauthorized(refusal):
        return response(unauthorized_answer(refusal))

    @app.errorhandler(Problem)
    def handle_problem(problem):
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    def handle_http_error(error):
        code = HTTP_ERROR_CODES.get(error.code, "http_error")
        response = problem_response(Problem(error.code, code, error.name, error.description))
        if error.code == 405:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error):
        observe.log_unexpected(request.environ)
        return problem_response(INTERNAL_ERROR)

    return app


app = create_app()
