"""Token settings that cannot be verified safely stop start-up with one line."""
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flashsale import settings as configuration
from conftest import ROOT
from support import TOKEN_SECRET


def public_pem(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RSA_PEM = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PEM = public_pem(ec.generate_private_key(ec.SECP256R1()))
WEAK_RSA_PEM = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
PRIVATE_PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.mark.parametrize("environ, message", [
    ({"AUTH_JWT_SECRET": "too-short"}, "AUTH_JWT_SECRET must be at least 32 bytes, got 9"),
    ({"AUTH_JWT_SECRET": TOKEN_SECRET, "AUTH_JWT_PUBLIC_KEY": RSA_PEM}, "not both"),
    ({"AUTH_JWT_SECRET": TOKEN_SECRET, "AUTH_JWT_ALGORITHMS": "none"}, "'none' is not one of HS256"),
    ({"AUTH_JWT_SECRET": TOKEN_SECRET, "AUTH_JWT_ALGORITHMS": "HS256,RS256"}, "'RS256' is not one of HS256"),
    ({"AUTH_JWT_SECRET": "s" * 40, "AUTH_JWT_ALGORITHMS": "HS512"}, "at least 64 bytes for HS512"),
    ({"AUTH_JWT_SECRET": RSA_PEM}, "AUTH_JWT_SECRET looks like a key or certificate"),
    ({"AUTH_JWT_PUBLIC_KEY": RSA_PEM, "AUTH_JWT_ALGORITHMS": "HS256"}, "'HS256' is not one of RS256"),
    ({"AUTH_JWT_PUBLIC_KEY": RSA_PEM, "AUTH_JWT_ALGORITHMS": "ES256"}, "ES256 does not fit the key"),
    ({"AUTH_JWT_PUBLIC_KEY": EC_PEM, "AUTH_JWT_ALGORITHMS": "ES384"}, "ES384 does not fit the key"),
    ({"AUTH_JWT_PUBLIC_KEY": WEAK_RSA_PEM}, "AUTH_JWT_PUBLIC_KEY is too weak"),
    ({"AUTH_JWT_PUBLIC_KEY": PRIVATE_PEM}, "AUTH_JWT_PUBLIC_KEY is not a PEM public key"),
    ({"AUTH_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----"},
     "AUTH_JWT_PUBLIC_KEY is not a PEM public key"),
    ({"AUTH_JWT_PUBLIC_KEY": "/nonexistent/idp.pem"}, "neither a PEM nor a readable PEM file"),
    ({"AUTH_JWT_AUDIENCE": "flashsale"}, "AUTH_JWT_AUDIENCE is set, but neither AUTH_JWT_SECRET nor"),
    ({"AUTH_JWT_SECRET": TOKEN_SECRET, "AUTH_JWT_LEEWAY_SECONDS": "-1"}, "AUTH_JWT_LEEWAY_SECONDS must be at least 0"),
])
def test_bad_token_settings_are_refused(environ, message):
    with pytest.raises(configuration.ConfigError, match=message.replace("(", r"\(")):
        configuration.auth_settings(environ)


@pytest.mark.parametrize("pem, algorithm", [(RSA_PEM, "RS256"), (EC_PEM, "ES256")])
def test_the_algorithm_follows_the_key_unless_configured(pem, algorithm):
    assert configuration.auth_settings({"AUTH_JWT_PUBLIC_KEY": pem})["auth_jwt_algorithms"] == (algorithm,)
    assert configuration.auth_settings({"AUTH_JWT_SECRET": TOKEN_SECRET})["auth_jwt_algorithms"] == ("HS256",)
    assert configuration.auth_settings({})["auth_jwt_algorithms"] == ()


@pytest.mark.parametrize("env, message", [
    ({"AUTH_JWT_SECRET": "short"}, "Invalid configuration: AUTH_JWT_SECRET must be at least 32 bytes, got 5"),
    ({"AUTH_JWT_SECRET": TOKEN_SECRET, "AUTH_JWT_PUBLIC_KEY": RSA_PEM},
     "Invalid configuration: set AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256/ES256), not both"),
])
def test_gunicorn_stops_with_one_line(env, message):
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"],
                            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [message]
