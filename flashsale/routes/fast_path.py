"""POST /buy_ticket answered before Flask's dispatch, which costs a sold-out answer as much again
as the rest of the app (docs/performance.md, Profile).

FastPath wraps Flask's WSGI app, inside observe.Observed, so the request id, the metrics and the
access line are the same either way. It runs the view's own code (purchases.buy), token check
first, and answers errors through errors.answer_for, as Flask's error handler does: the same bytes. Anything else goes to
Flask: other paths and methods, and bodies that only werkzeug's stream reads (chunked, or longer
than MAX_BODY_BYTES, answered 413 there)."""
from flashsale import observe
from flashsale.errors import answer_for
from flashsale.routes import purchases
from flashsale.routes.inputs import plain_length

PATH = "/buy_ticket"


class FastPath:
    def __init__(self, app, verifier):
        self.app = app
        self.verifier = verifier  # None in open mode

    def __call__(self, environ, start_response):
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
                or plain_length(environ) is None):
            return self.app(environ, start_response)
        environ[observe.ROUTE_KEY] = PATH
        try:
            answer = purchases.buy(environ, self.verifier)
        except Exception as error:
            answer = answer_for(error, environ)
        if answer.code is not None:
            environ[observe.CODE_KEY] = answer.code
        start_response(answer.status, list(answer.headers))
        return [answer.body]
