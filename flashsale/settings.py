"""Every setting of the service and its scripts, read once from the environment and `.env`.

Variables set in the environment win over `.env`. `FLASK_SKIP_DOTENV=1` (Flask's own switch)
leaves `.env` unread: the tests set it, so that a developer's `.env` cannot change what they test.
Run `python -m flashsale.settings` to check the configuration: it prints one line and exits 2 if it is bad.
"""
import ipaddress
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

ENV_FILE = Path(__file__).parent.parent / ".env"  # beside app.py
BUY_PATH = "/buy_ticket"


class ConfigError(Exception):
    """A setting the service cannot run with; its message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    api_url: str  # the service's base URL, without /buy_ticket
    bind: str  # where gunicorn listens: BIND, else API_URL's host and port
    web_concurrency: int
    pool_size: int
    max_overflow: int
    pool_timeout: float
    retry_budget: float
    sold_out_cache: float
    hold_sweep_seconds: float  # each worker's sweep of expired holds, 0 for none (sweeper.py)
    # nginx in front (deploy/nginx.py): requests/s per client address, 0 for no limit
    nginx_rate_limit: int
    # Buyer identity (docs/auth.md): bearer tokens verified with a secret or a public key, else open mode.
    auth_jwt_secret: str | None
    auth_jwt_public_key: str | None  # PEM text
    auth_jwt_algorithms: tuple
    auth_jwt_audience: str | None
    auth_jwt_issuer: str | None
    auth_jwt_leeway: float
    # Observability: metrics, request logs (docs/observe.md)
    metrics: bool
    metrics_allow: tuple  # ipaddress networks that may read /metrics
    metrics_dir: str  # prometheus_client's multiprocess directory under gunicorn
    access_log: bool
    log_format: str  # "text" or "json"
    # Client-side deadline on every database wait (docs/deadline.md).
    client_deadline: bool
    # Stripe's webhook signing secrets (docs/payments.md); none: POST /webhooks/stripe is off.
    stripe_webhook_secrets: tuple = ()


def environment():
    """The process environment over the values of `.env`."""
    if os.environ.get("FLASK_SKIP_DOTENV", "").lower() in ("1", "true", "yes"):
        return dict(os.environ)
    return {**dotenv_values(ENV_FILE), **os.environ}


def number(environ, name, default, kind, minimum):
    """The variable `name` as a number of type `kind`, at least `minimum`."""
    raw = (environ.get(name) or "").strip() or str(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not (value >= minimum and math.isfinite(value)):  # also refuses nan and inf
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def flag(environ, name, default):
    """The variable `name` as a switch: 1/true/yes/on or 0/false/no/off."""
    raw = (environ.get(name) or "").strip().lower() or default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (on or off), got {environ.get(name)!r}")


def networks(environ, name, default):
    """The variable `name` as a comma-separated list of IP addresses and networks (CIDR)."""
    raw = (environ.get(name) or "").strip() or default
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of IP addresses or networks "
                          f"(CIDR), got {raw!r}") from None


def one_of(environ, name, default, choices):
    raw = (environ.get(name) or "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {environ.get(name)!r}")
    return raw


def base_url(raw):
    """API_URL as the service's base URL. The original project's `.env` named the endpoint
    itself (`http://localhost:8000/buy_ticket`); both forms mean the same service."""
    parts = urlsplit(raw.strip())
    path = parts.path.rstrip("/")
    if path.endswith(BUY_PATH):
        path = path[: -len(BUY_PATH)]
    if parts.scheme not in ("http", "https") or not parts.hostname or path or parts.query:
        raise ConfigError(f"API_URL must be the service's base URL (http://host:port) or its "
                          f"{BUY_PATH} URL, got {raw!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"API_URL has a bad port: {raw!r}") from None
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def from_environ(environ):
    """Settings from a mapping of variables; raises ConfigError on the first bad one."""
    database_url = (environ.get("DATABASE_URL") or "").strip()
    if not database_url:
        raise ConfigError("DATABASE_URL is not set: set it in the environment or in .env")
    api_url = base_url(environ.get("API_URL") or "http://127.0.0.1:8000")
    api = urlsplit(api_url)
    return Settings(
        database_url=database_url,
        api_url=api_url,
        bind=(environ.get("BIND") or "").strip() or f"{api.hostname}:{api.port or 80}",
        web_concurrency=number(environ, "WEB_CONCURRENCY", 3, int, 1),
        pool_size=number(environ, "DB_POOL_SIZE", 1, int, 1),
        max_overflow=number(environ, "DB_MAX_OVERFLOW", 0, int, 0),
        pool_timeout=number(environ, "DB_POOL_TIMEOUT", 0.25, float, 0.01),
        retry_budget=number(environ, "DB_RETRY_BUDGET_SECONDS", 3.0, float, 0.01),
        sold_out_cache=number(environ, "SOLD_OUT_CACHE_SECONDS", 0.5, float, 0.0),
        hold_sweep_seconds=number(environ, "HOLD_SWEEP_SECONDS", 1.0, float, 0.0),
        # nginx in front (deploy/nginx.py)
        nginx_rate_limit=number(environ, "NGINX_RATE_LIMIT", 0, int, 0),
        **auth_settings(environ),
        # Observability. The default metrics directory is one per gunicorn master (whose process
        # reads the settings), so that servers running side by side never mix their figures.
        metrics=flag(environ, "METRICS", "1"),
        metrics_allow=networks(environ, "METRICS_ALLOW", "127.0.0.0/8,::1"),
        metrics_dir=((environ.get("PROMETHEUS_MULTIPROC_DIR") or "").strip()
                     or os.path.join(tempfile.gettempdir(), f"flashsale-metrics-{os.getpid()}")),
        access_log=flag(environ, "ACCESS_LOG", "0"),
        log_format=one_of(environ, "LOG_FORMAT", "text", ("text", "json")),
        # Client-side deadline on every database wait (docs/deadline.md).
        client_deadline=flag(environ, "DB_CLIENT_DEADLINE", "1"),
        stripe_webhook_secrets=webhook_secrets(environ),
    )


def webhook_secrets(environ):
    """STRIPE_WEBHOOK_SECRET: Stripe's signing secret (whsec_...), or several separated by commas
    while the endpoint's secret is rolled (Stripe signs with both for a while)."""
    raw = environ.get("STRIPE_WEBHOOK_SECRET") or ""
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    for secret in secrets:
        if not (secret.startswith("whsec_") and len(secret) > len("whsec_") and secret.isascii()
                and secret.isprintable()):
            raise ConfigError("STRIPE_WEBHOOK_SECRET must be Stripe's signing secret (whsec_...), or several "
                              "separated by commas")
    return secrets


# Buyer identity: the settings of auth.py, checked here so that a bad one stops start-up.
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}  # each with its shortest secret (RFC 7518 3.2)
MIN_SECRET_BYTES = HMAC_ALGORITHMS["HS256"]
KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def public_key_pem(raw):
    """AUTH_JWT_PUBLIC_KEY as PEM text: the value itself (literal \\n allowed, as one line of an
    environment variable), or the contents of the file it names."""
    if raw.startswith("-----BEGIN"):
        return raw.replace("\\n", "\n")
    try:
        return Path(raw).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"AUTH_JWT_PUBLIC_KEY is neither a PEM nor a readable PEM file: {raw!r} "
                          f"({exc.__class__.__name__})") from None


def key_algorithms(pem, names):
    """The algorithms that verify with this public key: `names`, each checked against the key,
    or else the one algorithm the key's type implies."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from jwt.algorithms import get_default_algorithms

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"AUTH_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    known = get_default_algorithms()

    def fits(name):
        try:
            known[name].prepare_key(key)
        except Exception:  # PyJWT's InvalidKeyError, or a TypeError for the wrong key class
            return False
        return True

    names = names or [next((name for name in KEY_ALGORITHMS if fits(name)), "RS256")]
    for name in names:
        if name not in KEY_ALGORITHMS:
            raise ConfigError(f"AUTH_JWT_ALGORITHMS: {name!r} is not one of {', '.join(KEY_ALGORITHMS)} "
                              f"(a public key verifies these)")
        if not fits(name):
            raise ConfigError(f"AUTH_JWT_ALGORITHMS: {name} does not fit the key of AUTH_JWT_PUBLIC_KEY")
        weak = known[name].check_key_length(key)
        if weak:
            raise ConfigError(f"AUTH_JWT_PUBLIC_KEY is too weak: {weak}")
    return tuple(names)


def auth_settings(environ):
    """The auth_jwt_* fields of Settings. The algorithms come from configuration only, never
    from a token, and one kind of key serves one family of algorithms."""
    def text(name):
        return (environ.get(name) or "").strip() or None

    secret, key = text("AUTH_JWT_SECRET"), text("AUTH_JWT_PUBLIC_KEY")
    names = [name.strip() for name in (text("AUTH_JWT_ALGORITHMS") or "").split(",") if name.strip()]
    if secret and key:
        raise ConfigError("set AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256/ES256), not both")
    if secret:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes, "
                              f"got {len(secret.encode())}")
        from jwt.algorithms import HMACAlgorithm
        from jwt.exceptions import InvalidKeyError
        try:  # PyJWT refuses a PEM or SSH key as an HMAC secret: say so at start, not per token
            HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
        except InvalidKeyError:
            raise ConfigError("AUTH_JWT_SECRET looks like a key or certificate; an HMAC secret is "
                              "random bytes (a public key goes in AUTH_JWT_PUBLIC_KEY)") from None
        names = names or ["HS256"]
        for name in names:
            if name not in HMAC_ALGORITHMS:
                raise ConfigError(f"AUTH_JWT_ALGORITHMS: {name!r} is not one of {', '.join(HMAC_ALGORITHMS)} "
                                  f"(AUTH_JWT_SECRET verifies these)")
            if len(secret.encode()) < HMAC_ALGORITHMS[name]:
                raise ConfigError(f"AUTH_JWT_SECRET must be at least {HMAC_ALGORITHMS[name]} bytes for {name}")
        algorithms = tuple(names)
    elif key:
        key = public_key_pem(key)
        algorithms = key_algorithms(key, names)
    else:
        algorithms = ()
        stray = [name for name in ("AUTH_JWT_ALGORITHMS", "AUTH_JWT_AUDIENCE", "AUTH_JWT_ISSUER") if text(name)]
        if stray:  # meant to verify tokens, but forgot the key: do not run open
            raise ConfigError(f"{stray[0]} is set, but neither AUTH_JWT_SECRET nor AUTH_JWT_PUBLIC_KEY is")
    return {
        "auth_jwt_secret": secret,
        "auth_jwt_public_key": key,
        "auth_jwt_algorithms": algorithms,
        "auth_jwt_audience": text("AUTH_JWT_AUDIENCE"),
        "auth_jwt_issuer": text("AUTH_JWT_ISSUER"),
        "auth_jwt_leeway": number(environ, "AUTH_JWT_LEEWAY_SECONDS", 30, float, 0),
    }


@cache
def load():
    """This process's settings, read once. A gunicorn worker inherits its master's."""
    return from_environ(environment())


def load_or_exit():
    """The settings, or exit with one line saying what is wrong: for scripts and gunicorn."""
    try:
        return load()
    except ConfigError as exc:
        sys.exit(f"Invalid configuration: {exc}")


if __name__ == "__main__":
    try:
        load()
    except ConfigError as exc:
        print(f"Invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
