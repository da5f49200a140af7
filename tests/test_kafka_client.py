"""worker/kafka_client.py and worker/oauth.py without a broker: the KAFKA_* security settings
become aiokafka's connection arguments, bad ones are one line naming the variable, and tokens
come from a real OIDC endpoint on loopback (or are signed for Amazon MSK IAM)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from tests.oidc import TokenEndpoint
from worker import cli
from worker.kafka_client import connection_kwargs
from worker.oauth import ClientCredentialsTokens, MskIamTokens, TokenRequestFailed
from worker.settings import ConfigError, load_settings

SECRET = "s3cret-value-never-shown"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """A CA and a client certificate whose key is encrypted with SECRET."""
    ca = trustme.CA()
    leaf = ca.issue_cert("worker-client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(SECRET.encode()),
    )
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    files["key"].write_bytes(encrypted)
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9093")
    yield monkeypatch


def _problems(env: pytest.MonkeyPatch, **variables: str) -> list[str]:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return caught.value.problems


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: Input should be"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SASL_MECHANISM: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs it",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SASL_MECHANISM": "PLAIN"},
            "KAFKA_SASL_MECHANISM: set only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or "
            "SASL_PLAINTEXT",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_OAUTH_TOKEN_URL, KAFKA_OAUTH_CLIENT_ID, "
            "KAFKA_OAUTH_CLIENT_SECRET",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CA_FILE: not a readable file (got '/nonexistent/ca.pem')",
        ),
        ({"KAFKA_CONNECT_TIMEOUT": "0"}, "KAFKA_CONNECT_TIMEOUT: Input should be greater than 0"),
    ],
)
def test_a_bad_security_setting_is_one_line_naming_the_variable(
    env: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    """Each contradiction or gap is reported as one line that starts with the variable."""
    problems = _problems(env, **variables)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_a_wrong_key_password_is_a_configuration_error_that_shows_noSecretStr(
    env: pytest.MonkeyPatch, tls_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A key password that does not decrypt the key stops the CLI with exit 2 and one line
    naming the TLS variables; neither password appears."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": tls_files["ca"],
        "KAFKA_SSL_CERT_FILE": tls_files["cert"],
        "KAFKA_SSL_KEY_FILE": tls_files["key"],
        "KAFKA_SSL_KEY_PASSWORD": "wrong-" + SECRET,
    }.items():
        env.setenv(name, value)
    assert cli.main(["dlq", "list"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("configuration error: KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE, ")
    assert SECRET not in err


def test_plaintext_gives_aiokafka_its_defaults(env: pytest.MonkeyPatch) -> None:
    """Without security settings the clients connect exactly as before."""
    assert connection_kwargs(load_settings().kafka) == {
        "bootstrap_servers": "broker.example:9093",
        "security_protocol": "PLAINTEXT",
    }


def test_mtls_verifies_the_broker_and_its_host_name_and_presents_the_client_certificate(
    env: pytest.MonkeyPatch, tls_files: dict[str, str]
) -> None:
    """SSL: a context that requires a trusted broker certificate for the host name, loaded
    with the client certificate and its encrypted key."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "ssl",
        "KAFKA_SSL_CA_FILE": tls_files["ca"],
        "KAFKA_SSL_CERT_FILE": tls_files["cert"],
        "KAFKA_SSL_KEY_FILE": tls_files["key"],
        "KAFKA_SSL_KEY_PASSWORD": SECRET,
    }.items():
        env.setenv(name, value)
    kwargs = connection_kwargs(load_settings().kafka)
    context = kwargs.pop("ssl_context")
    assert kwargs == {"bootstrap_servers": "broker.example:9093", "security_protocol": "SSL"}
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


def test_scram_passes_the_user_and_password_and_never_shows_the_password(
    env: pytest.MonkeyPatch,
) -> None:
    """SASL_SSL + SCRAM: aiokafka gets the password; the settings' repr hides it."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "worker",
        "KAFKA_SASL_PASSWORD": SECRET,
    }.items():
        env.setenv(name, value)
    settings = load_settings().kafka
    kwargs = connection_kwargs(settings)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("worker", SECRET)
    assert kwargs["ssl_context"].check_hostname
    assert SECRET not in repr(settings)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint("worker", SECRET, lifetime=100.0).start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_oidc_tokens_are_reused_then_refreshed_before_they_expire(
    token_endpoint: TokenEndpoint,
) -> None:
    """A token is reused while less than 80% of its lifetime has passed; after that the next
    handshake gets a new one, before the old one expires."""
    clock = Clock()
    tokens = ClientCredentialsTokens(
        token_endpoint.url, "worker", SecretStr(SECRET), "kafka", clock=clock
    )
    first = await tokens.token()
    clock.now += 79
    assert await tokens.token() == first
    assert token_endpoint.issued == 1
    clock.now += 2  # 81 of 100 seconds
    await tokens.token()
    assert token_endpoint.issued == 2
    claims = first.split(".")[1]
    assert b'"scope": "kafka"' in base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))


async def test_a_refused_client_is_final_and_its_secret_is_not_in_the_error(
    token_endpoint: TokenEndpoint,
) -> None:
    """401 from the endpoint: a non-retriable error with the OAuth error code only."""
    tokens = ClientCredentialsTokens(token_endpoint.url, "worker", SecretStr("wrong-" + SECRET))
    with pytest.raises(TokenRequestFailed) as caught:
        await tokens.token()
    assert not caught.value.retriable
    assert caught.value.args[0] == "token endpoint refused the client: HTTP 401 invalid_client"
    assert SECRET not in repr(caught.value)


async def test_an_unreachable_token_endpoint_is_retriable() -> None:
    """Nothing listening at the token URL: retriable (the start-up check keeps trying)."""
    tokens = ClientCredentialsTokens("http://127.0.0.1:39198/token", "worker", SecretStr(SECRET))
    with pytest.raises(TokenRequestFailed) as caught:
        await tokens.token()
    assert caught.value.retriable
    assert caught.value.args[0].startswith("token endpoint unreachable: ConnectError")


async def test_msk_iam_wiring_signs_a_token_for_the_region(
    env: pytest.MonkeyPatch,
) -> None:
    """KAFKA_OAUTH_PROVIDER=aws-msk-iam: OAUTHBEARER over SASL_SSL with tokens that the
    aws-msk-iam-sasl-signer-python extra signs locally from the AWS credentials (static test
    credentials here: signing needs no network)."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_OAUTH_PROVIDER": "aws-msk-iam",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    }.items():
        env.setenv(name, value)
    kwargs = connection_kwargs(load_settings().kafka)
    provider = kwargs["sasl_oauth_token_provider"]
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(provider, MskIamTokens)
    token = await provider.token()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    assert url.startswith(
        "https://kafka.eu-central-1.amazonaws.com/?Action=kafka-cluster%3AConnect"
    )
    assert "AKIAIOSFODNN7EXAMPLE" in url and "X-Amz-Signature=" in url


def test_msk_iam_needs_a_region(env: pytest.MonkeyPatch) -> None:
    """Without AWS_REGION the MSK IAM provider is a configuration error naming it."""
    env.delenv("AWS_REGION", raising=False)
    problems = _problems(
        env,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="OAUTHBEARER",
        KAFKA_OAUTH_PROVIDER="aws-msk-iam",
    )
    assert problems == ["AWS_REGION: KAFKA_OAUTH_PROVIDER=aws-msk-iam needs it"]
