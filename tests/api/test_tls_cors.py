"""HTTPS (with client certificates) and CORS, on one real server started with both, an API key
and certificates this module makes; CORS off by default on the shared server; the start-up
errors for TLS files, from the command line."""

from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import openai
import pytest

from server.ops.runner import uvicorn_config
from server.settings import Settings
from tests.support.app import build_app
from tests.support.certificates import Certificates, make_certificates
from harness.server import REPO_ROOT, running_server

API_KEY = "tls-test-key"
ALLOWED_ORIGIN = "https://chat.example.com"
OTHER_ORIGIN = "https://evil.example.net"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def client_context(certificates: Certificates, *, with_client_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if with_client_cert:
        context.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
    return context


@pytest.fixture(scope="module")
def tls_server(certificates):
    """HTTPS only, client certificates required (mutual TLS), CORS for one origin, an API key."""
    with running_server(
        "--ssl-certfile", str(certificates.server_cert), "--ssl-keyfile", str(certificates.server_key),
        "--ssl-ca-certs", str(certificates.ca), "--allowed-origins", ALLOWED_ORIGIN,
        "--default-max-tokens", "16",
        api_key=API_KEY, scheme="https", verify=client_context(certificates),
    ) as server:
        yield server


# --- TLS ----------------------------------------------------------------------------------------


@pytest.mark.engine
def test_the_sdk_talks_to_the_server_over_https(tls_server, certificates):
    client = openai.OpenAI(
        base_url=tls_server.openai_base_url, api_key=API_KEY, max_retries=0,
        http_client=httpx.Client(verify=client_context(certificates)),
    )
    assert tls_server.openai_base_url.startswith("https://")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=8,
    )
    assert reply.choices[0].message.content
    assert "listening on https://127.0.0.1" in tls_server.log_text()


@pytest.mark.engine
def test_plain_http_is_refused(tls_server):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health/live", timeout=10)


@pytest.mark.engine
def test_a_client_without_a_certificate_is_refused(tls_server, certificates):
    context = client_context(certificates, with_client_cert=False)
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_server.base_url + "/health/live", verify=context, timeout=10)


def test_mutual_tls_needs_client_certificates_only_with_ca_certs(certificates):
    def verify_mode(**tls) -> ssl.VerifyMode:
        settings = Settings(ssl_certfile=certificates.server_cert, ssl_keyfile=certificates.server_key, **tls)
        config = uvicorn_config(settings, build_app())
        config.load()  # uvicorn builds its SSL context here
        return config.ssl.verify_mode

    assert verify_mode(ssl_ca_certs=certificates.ca) == ssl.CERT_REQUIRED
    assert verify_mode() == ssl.CERT_NONE


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", "serve", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "case, expected",
    [
        ("mismatched key", "does not match the certificate"),
        ("missing key file", "does not exist"),
        ("missing certificate file", "does not exist"),
        ("key without certificate", "--ssl-keyfile needs --ssl-certfile"),
        ("certificate without its key", "give --ssl-keyfile"),
    ],
)
def test_bad_tls_files_are_a_one_line_start_up_error(certificates, tmp_path, case, expected):
    cert, key = str(certificates.server_cert), str(certificates.server_key)
    args = {
        "mismatched key": ["--ssl-certfile", cert, "--ssl-keyfile", str(certificates.other_key)],
        "missing key file": ["--ssl-certfile", cert, "--ssl-keyfile", str(tmp_path / "absent.pem")],
        "missing certificate file": ["--ssl-certfile", str(tmp_path / "absent.pem"), "--ssl-keyfile", key],
        "key without certificate": ["--ssl-keyfile", key],
        "certificate without its key": ["--ssl-certfile", cert],
    }[case]
    result = run_serve(*args)
    assert result.returncode != 0
    assert expected in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


# --- CORS ---------------------------------------------------------------------------------------


@pytest.mark.engine
def test_a_preflight_from_an_allowed_origin_gets_the_headers_without_an_api_key(tls_server):
    response = httpx.options(
        tls_server.base_url + "/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN, **PREFLIGHT},
        verify=tls_server.verify, timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.engine
def test_a_preflight_from_another_origin_gets_no_cors_headers(tls_server):
    response = httpx.options(
        tls_server.base_url + "/v1/chat/completions", headers={"Origin": OTHER_ORIGIN, **PREFLIGHT},
        verify=tls_server.verify, timeout=10,
    )
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.engine
def test_answers_to_an_allowed_origin_carry_cors_headers_even_a_401(tls_server):
    url = tls_server.base_url + "/v1/models"
    unauthorized = httpx.get(url, headers={"Origin": ALLOWED_ORIGIN}, verify=tls_server.verify, timeout=10)
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    allowed = httpx.get(url, headers={"Origin": ALLOWED_ORIGIN, **tls_server.headers()}, verify=tls_server.verify, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()


@pytest.mark.engine
def test_tokenize_and_detokenize_need_the_api_key(tls_server):
    for path, body in (("/tokenize", {"prompt": "Hello"}), ("/detokenize", {"tokens": [1, 2]})):
        url = tls_server.base_url + path
        assert httpx.post(url, json=body, verify=tls_server.verify, timeout=10).status_code == 401
        assert httpx.post(url, json=body, headers=tls_server.headers(), verify=tls_server.verify, timeout=10).status_code == 200


@pytest.mark.engine
def test_no_cors_headers_by_default(default_server):
    preflight = httpx.options(
        default_server.base_url + "/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN, **PREFLIGHT}, timeout=10
    )
    plain = httpx.get(default_server.base_url + "/v1/models", headers={"Origin": ALLOWED_ORIGIN}, timeout=10)
    assert plain.status_code == 200
    assert not [name for name in {**preflight.headers, **plain.headers} if name.lower().startswith("access-control-")]
