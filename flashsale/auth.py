"""Who the buyer is: a bearer token (RFC 6750) signed by the shop's identity provider, verified
with PyJWT. A leaf module: it imports nothing of this project, app.py hands it the settings.

Without AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY the service runs in open mode: the buyer is
whatever the request body says, as before tokens existed."""
import math
import re
import time

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

REALM = "flashsale"
MAX_TOKEN_LENGTH = 4096  # far above a real token; refused before any parsing
# Three base64url segments without padding (RFC 7515 section 2; PyJWT would take a trailing '=');
# the signature may be empty (alg none), which PyJWT refuses.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
TIME_CLAIMS = ("exp", "nbf", "iat")
OPEN_MODE_WARNING = ("buyer identity is NOT verified (open mode): user_id is taken from the request "
                     "body; set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY to verify bearer tokens")

# Why PyJWT refused a token, said in error_description (RFC 6750: visible ASCII, no quote).
REASONS = [
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not valid yet."),
    (jwt.InvalidAudienceError, "The token is not meant for this service (aud)."),
    (jwt.InvalidIssuerError, "The token was not issued by the configured issuer (iss)."),
    (jwt.MissingRequiredClaimError, "The token lacks a required claim."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not accepted."),
    (jwt.InvalidSignatureError, "The token's signature does not verify."),
    (jwt.exceptions.InvalidSubjectError, "The token's subject (sub) is not a string."),
]
MALFORMED = "The token is malformed."


class Unauthorized(Exception):
    """A 401: no token (`unauthorized`), or one that does not verify (`invalid_token`)."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code, self.detail = code, detail

    @property
    def challenge(self):
        """The WWW-Authenticate header of RFC 6750 section 3."""
        if self.code == "unauthorized":
            return f'Bearer realm="{REALM}"'
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{self.detail}"'


def mode(settings):
    return "verified" if settings.auth_jwt_secret or settings.auth_jwt_public_key else "open"


def is_number(value):
    """A NumericDate: a JSON number, not a string, a boolean, NaN or infinity."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def claims_well_typed(claims):
    """The registered claims have RFC 7519's types. PyJWT reads a time claim with int(), which
    takes "123" or true, and lets a falsy aud (0, [], null) or any iss pass when none is configured.
    An aud names somebody: a non-empty string, or a non-empty list of them."""
    aud = claims.get("aud", "anyone")
    return (all(is_number(claims[name]) for name in TIME_CLAIMS if name in claims)
            and isinstance(claims.get("iss", ""), str)
            and bool(aud)
            and (isinstance(aud, str) or (type(aud) is list and all(isinstance(one, str) and one for one in aud))))


class Verifier:
    """Checks bearer tokens against the configured key, algorithms, audience and issuer.

    Verified tokens are remembered per process, keyed by the token string, until their own exp:
    a buyer's retries cost a dictionary lookup. An entry is never used past exp, so a verdict on
    a token that has expired since is never given."""

    CACHE_SIZE = 10_000

    def __init__(self, settings, valid_subject):
        self.key = (settings.auth_jwt_secret.encode() if settings.auth_jwt_secret
                    else load_pem_public_key(settings.auth_jwt_public_key.encode()))
        self.algorithms = list(settings.auth_jwt_algorithms)
        self.decoder = jwt.PyJWT(options={"require": ["exp", "sub"]})
        self.audience, self.issuer = settings.auth_jwt_audience, settings.auth_jwt_issuer
        self.leeway = settings.auth_jwt_leeway
        self.valid_subject = valid_subject
        self.verified = {}  # token -> (buyer, exp)

    def buyer(self, authorization):
        """The buyer (`sub`) of the Authorization header's bearer token, or Unauthorized."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("unauthorized", "This request needs Authorization: Bearer <token>.")
        token = token.strip(" \t")  # RFC 6750's 1*SP; str.strip() would also drop U+00A0 and U+0085
        remembered = self.verified.get(token)
        if remembered is not None and time.time() < remembered[1]:
            return remembered[0]
        buyer, exp = self.verify(token)
        if len(self.verified) >= self.CACHE_SIZE:
            self.verified.clear()  # simple and bounded; refilled by the next requests
        self.verified[token] = (buyer, exp)
        return buyer

    def verify(self, token):
        """(sub, exp) of a token that verifies, else Unauthorized."""
        if len(token) > MAX_TOKEN_LENGTH or not COMPACT_JWS.fullmatch(token):
            raise Unauthorized("invalid_token", MALFORMED)
        try:
            claims = self.decoder.decode(token, self.key, algorithms=self.algorithms, audience=self.audience,
                                         issuer=self.issuer, leeway=self.leeway)
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in REASONS if isinstance(exc, kind)), MALFORMED)
            raise Unauthorized("invalid_token", reason) from None
        if not claims_well_typed(claims):
            raise Unauthorized("invalid_token", "A claim has the wrong type.")
        if not self.valid_subject(claims["sub"]):
            raise Unauthorized("invalid_token", "The token's subject (sub) is not a valid user id.")
        return claims["sub"], claims["exp"]


def verifier(settings, valid_subject):
    """A Verifier in verified mode, None in open mode."""
    return Verifier(settings, valid_subject) if mode(settings) == "verified" else None
