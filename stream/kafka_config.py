"""Connection options shared by every Kafka client of the worker (aiokafka and faust).

Secrets (`CHURN_SASL_PASSWORD`, `CHURN_SSL_KEY_PASSWORD`) are `SecretStr` in the settings
and are unwrapped only here, into the keyword arguments handed to the clients; nothing in
this module logs them, and `describe` gives a loggable summary without them.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from stream.settings import Settings

# How long the worker's consumers let the broker hold a fetch that finds nothing new.
# The embedded broker answers a held fetch late even when records arrive meanwhile: on a
# steady 10,000 records/s, records reached a consumer 139 ms after they were produced at
# the median (p99 266 ms) with aiokafka's default of 500 ms, 33 ms (p99 59 ms) with 100 ms.
# (A single record produced while a fetch waited came at once, see faust_consumer.py.)
# An idle consumer asks ten times a second instead of twice.
FETCH_MAX_WAIT_MS: Final = 100


def security_protocol(settings: Settings) -> str:
    if settings.sasl_mechanism:
        return "SASL_SSL" if settings.tls else "SASL_PLAINTEXT"
    return "SSL" if settings.tls else "PLAINTEXT"


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context, or None for a plaintext connection."""
    if not settings.tls:
        return None
    cafile = None if settings.ssl_cafile is None else str(settings.ssl_cafile)
    context = ssl.create_default_context(cafile=cafile)
    if settings.ssl_certfile is not None:
        password = settings.ssl_key_password
        context.load_cert_chain(
            str(settings.ssl_certfile),
            None if settings.ssl_keyfile is None else str(settings.ssl_keyfile),
            None if password is None else password.get_secret_value(),
        )
    return context


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/AIOKafkaProducer/AIOKafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": security_protocol(settings),
        "ssl_context": ssl_context(settings),
    }
    if settings.sasl_mechanism:
        assert settings.sasl_password is not None  # enforced by Settings
        options |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(settings: Settings) -> Any:
    """faust's broker_credentials, or None for a plaintext broker."""
    import faust

    context = ssl_context(settings)
    if settings.sasl_mechanism:
        assert settings.sasl_password is not None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def describe(settings: Settings) -> str:
    """A one-line, secret-free summary of how the worker connects (for the start-up log)."""
    parts = [f"brokers={settings.bootstrap_servers}", f"security={security_protocol(settings)}"]
    if settings.sasl_mechanism:
        parts.append(f"sasl={settings.sasl_mechanism} user={settings.sasl_username}")
    if settings.tls:
        parts.append(f"ca={settings.ssl_cafile or 'system'}")
        if settings.ssl_certfile is not None:
            parts.append(f"client-cert={settings.ssl_certfile}")
    return " ".join(parts)
