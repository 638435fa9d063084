"""Connection options shared by every Kafka client of the worker (aiokafka and faust)."""

from __future__ import annotations

import ssl
from typing import Any

from stream.settings import Settings


def security_protocol(settings: Settings) -> str:
    tls = settings.ssl_cafile is not None
    if settings.sasl_mechanism:
        return "SASL_SSL" if tls else "SASL_PLAINTEXT"
    return "SSL" if tls else "PLAINTEXT"


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ssl_cafile is None:
        return None
    return ssl.create_default_context(cafile=str(settings.ssl_cafile))


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/AIOKafkaProducer."""
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
