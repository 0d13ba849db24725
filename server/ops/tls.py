"""HTTPS through uvicorn: its TLS options from the settings, and the start-up check that names a
missing, unreadable or mismatched file in one line (before the model loads, not as a traceback
from uvicorn minutes later).

`--ssl-ca-certs` turns on mutual TLS: every client must then present a certificate signed by one
of those CAs. Without it no client certificate is asked for.
"""

from __future__ import annotations

import ssl
from typing import Any

from server.settings import Settings


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; refuse it instead.
    return b""


def tls_problem(settings: Settings) -> str | None:
    """What is wrong with the TLS settings, in one line; None when they can serve."""
    cert, key, ca = settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs
    if cert is None:
        for flag, value in (("--ssl-keyfile", key), ("--ssl-ca-certs", ca)):
            if value is not None:
                return f"{flag} needs --ssl-certfile"
        return None
    for flag, path in (("--ssl-certfile", cert), ("--ssl-keyfile", key), ("--ssl-ca-certs", ca)):
        if path is not None and not path.is_file():
            return f"{flag} {path} does not exist"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            return f"--ssl-keyfile {key or cert} does not match the certificate in --ssl-certfile {cert}"
        if key is None:
            return f"--ssl-certfile {cert} holds no readable certificate and private key; give --ssl-keyfile ({error.reason})"
        return f"--ssl-certfile {cert} / --ssl-keyfile {key}: not a readable PEM certificate and unencrypted key ({error.reason})"
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as error:
            return f"--ssl-ca-certs {ca} holds no readable PEM certificate ({error.reason})"
    return None


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config's TLS keywords: none for plain HTTP."""
    if settings.ssl_certfile is None:
        return {}
    ca = settings.ssl_ca_certs
    return {
        "ssl_certfile": str(settings.ssl_certfile),
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        "ssl_ca_certs": str(ca) if ca else None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if ca else ssl.CERT_NONE,
    }
