from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.auth import AuthError, Role, TokenVerifier, mint_token
from config.settings import Settings

SECRET = "a" * 40


def verifier(settings: Settings) -> TokenVerifier:
    return TokenVerifier.from_settings(settings)


def test_a_minted_token_identifies_the_caller() -> None:
    settings = Settings(jwt_secret=SECRET)
    token = mint_token(settings, rep="R0001", name="王伟", roles=[Role.REPRESENTATIVE, Role.HOST])
    who = verifier(settings).verify(token)
    assert who.rep == "R0001" and who.name == "王伟"
    assert who.roles == {Role.REPRESENTATIVE, Role.HOST}


@pytest.mark.security
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: None, "token is required"),
        (lambda s: "", "token is required"),
        (lambda s: "not-a-jwt", "invalid"),
        (lambda s: mint_token(s, rep="R1", ttl=-60), "expired"),
        (lambda s: mint_token(Settings(jwt_secret="b" * 40), rep="R1"), "invalid"),
        (lambda s: mint_token(Settings(jwt_secret=SECRET, jwt_audience="other"), rep="R1"), "audience"),
        (
            lambda s: jwt.encode(
                {"sub": "R1", "aud": "tribune", "exp": int(time.time()) + 60, "roles": []},
                None,
                algorithm="none",
            ),
            "signed with HS256",
        ),
        (lambda s: jwt.encode({"sub": "R1", "aud": "tribune"}, SECRET, algorithm="HS256"), "'exp'"),
        (
            lambda s: jwt.encode(
                {"sub": "R1", "aud": "tribune", "exp": int(time.time()) + 60, "roles": ["president"]},
                SECRET,
                algorithm="HS256",
            ),
            "unknown role",
        ),
        (lambda s: "x" * 9000, "too large"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(make, message: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(jwt_secret=SECRET)
    with pytest.raises(AuthError, match=message):
        verifier(settings).verify(make(settings))


@pytest.mark.security
def test_rs256_with_the_platforms_public_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "platform.pem"
    public = tmp_path / "platform.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(jwt_public_key=public)
    token = mint_token(settings, rep="R7", roles=[Role.ADMIN], private_key=private)
    assert verifier(settings).verify(token).roles == {Role.ADMIN}
    # An HS256 token signed with the public key as a "secret" (algorithm confusion) is refused.
    forged = jwt.encode(
        {"sub": "R7", "aud": "tribune", "exp": int(time.time()) + 60, "roles": ["admin"]},
        "irrelevant-" + "x" * 32,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="RS256"):
        verifier(settings).verify(forged)
