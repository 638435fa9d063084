"""Security settings: SASL (PLAIN/SCRAM) and TLS pass through from CHURN_* to every Kafka
client of the worker; secrets are SecretStr and never appear in a repr, a dump, the
start-up summary or a log line."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr, ValidationError

from stream.kafka_config import (
    aiokafka_options,
    describe,
    faust_credentials,
    security_protocol,
    ssl_context,
)
from stream.settings import Settings

PASSWORD = "sasl-secret-Zq9"
KEY_PASSWORD = "key-secret"

# Throw-away test certificates (self-signed CA, client certificate signed by it, and its
# private key encrypted with KEY_PASSWORD); valid until 2126. Not used for anything else.
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIDITCCAgmgAwIBAgIUG4XqF9XKaWYCiIjJhzZA+aTuMYAwDQYJKoZIhvcNAQEL
BQAwHzEdMBsGA1UEAwwUY2h1cm4tc3RyZWFtIHRlc3QgQ0EwIBcNMjYxMTI1MDQx
MjIxWhgPMjEyNjExMDEwNDEyMjFaMB8xHTAbBgNVBAMMFGNodXJuLXN0cmVhbSB0
ZXN0IENBMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAg7zODa3T8MnU
EHlxYDCgeyM9cK3JJWmWletRDM9ChJsDL1HrUJtM8BsWTWiWsjJQGHzqe4AbqbU6
OgkQwgcjODMNSXiZXGe36a7EJ4+HynHn+lIH8R6B6/PuXj0BSm8dPlmtPakl+5dF
JnoG5zuZCVV1j1ygLlz1anUvab/YXfcI1Yk1m5y7NOJLuch73gGoFs2BOij+P0LZ
S3H3FT33I/VpbEbFCW6KThyKldckhNWrcLyE9ru2ysPSVZWkDQDUK64WHq6W8i7o
PDlIbBCK2qV7tjkEHtVm4OaiESern+Hp1/2O6qsbz7uihpz69FsmhVQNsDZ+xC9A
tCITdbmR1wIDAQABo1MwUTAdBgNVHQ4EFgQUiyEyxHWlP7P2uBp1fZvu0Tdm9eww
HwYDVR0jBBgwFoAUiyEyxHWlP7P2uBp1fZvu0Tdm9ewwDwYDVR0TAQH/BAUwAwEB
/zANBgkqhkiG9w0BAQsFAAOCAQEAZb+K9C2tfcrylQodxwO1miqLy1lTj7EMKtH4
n21PKtcVlycXK3xhZP2/TXA90Cq+lRXINCDDUcPX3jnkcy4uCgMcW+8jBAZbHe5C
X51lsA3DZ+HzpvRddwLNYHu9CEvPxvldVRWAX2a2z/S5SOnDWga8/32HBIx/HKwL
SzetArU/ymdkNLE2FI19ivkAzim53LAC+4zVE5LGkE9jgYHlIgjHn76bizsE/vqr
om5jueCQFC5uU+iTcZhh7FOziOmqP+wte2FVNjFkVocAT9M6k74z5LA5GE4mVq0r
3sM0apClvOciFPFQynyMKYCk2LviG6QHTJqOaIOV8xpHijKRwQ==
-----END CERTIFICATE-----
"""
CLIENT_PEM = """-----BEGIN CERTIFICATE-----
MIICyzCCAbMCFAG2Pp1TJtAu4vBn7Y6zN6zOlU/fMA0GCSqGSIb3DQEBCwUAMB8x
HTAbBgNVBAMMFGNodXJuLXN0cmVhbSB0ZXN0IENBMCAXDTI2MTEyNTA0MTIyMVoY
DzIxMjYxMTAxMDQxMjIxWjAjMSEwHwYDVQQDDBhjaHVybi1zdHJlYW0gdGVzdCBj
bGllbnQwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQC7qpdJRUEDjGia
fyf0AUr1gEGaWwmD6HQOGLXMk9lH6MHPX4FTfWOp6hCG+aqLrMzOD9B6cJPeAvYE
ksDy7DFqvZj2VPLrZEEJUtB81wzd5kK9+iANojJzztnYztCAvEsYXWXzH4+dGL7R
mVKJ3kgKlhQKPHJs3CvDjW6snuA3QyTh3Y3J3IYtA+GeJY5WSUhBdDMs9whf2L/W
uTwH5JGCEuLk4L3jvn1u3jebdrLUIaLNvvSjRgKVSXVaXVdJaUshrwFg7GAVlk8I
IXT+bmQaUh+lmdaklkapSWCDkT+BpdyIprnjLVNDpnt9Gv9ff6X8CmR2IRTRqV/M
q+EXoKERAgMBAAEwDQYJKoZIhvcNAQELBQADggEBACdR7a8tKPTr/TzKtNyC2QMd
ZAsSHKyWebIkbBGn+1Idf/WmSJlS2CW1PNZa7iIzVnlMAzKInOFDQwnRMC/Duvv9
rHTT9RerRtyNGTrcwauY55J786p7ZfNyN4GdpD6c0LEBJi/TH25z2hJjD5l5mppl
tjYddKkSub5t53HM/1JkjlTc8TIXVseI6682b4oXQDzlqoDqGKzcbe5mVAw9cK9D
an4RptwAFOqQR1pIixdoPccxz9HDNXMWVDy8rMMG78nS8WcpK2xu1bOidxXE9AOV
hNcNTgT3aQRS0fPIbo3bHM0n6HAjFsdHEUdJtUk0+oo60ucljECnEINevCqlTgw=
-----END CERTIFICATE-----
"""
CLIENT_KEY = """-----BEGIN ENCRYPTED PRIVATE KEY-----
MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI7Pw9DXrC3NoCAggA
MAwGCCqGSIb3DQIJBQAwFAYIKoZIhvcNAwcECDXJoeLgFuFvBIIEyOgV27vKTlM9
35T3DWKzXB3ICvrLVKuzZTwLZwu6VAkTaU1gPhmER65v5FaA+d95nSFl48+c63XH
y2Tn13SA7Js2KjtwfLKdVWtXFxDfrDcD/iLxBlvSOxpRC7BQa3bx//wLSlAedPpW
ldrv45uA7g7u6jp/qnCWs4cYWPcMGXsJmkApHg1u1gW72YSGuyA0krslbm49CaNA
sskWxslrP/xTBD7Rp9VYYyC8l43nfwpeaiuOZlMuzM6/vVVDTo7VC/2CsCNHTHMo
jOwcW3AGNS5B1B5g9aj6elqXQoeTWK4m9Vy5+BbZMP1yKFAilBr/BbgWxfOD7+pV
JaLAolf0aNjSoAkZUqQQCTP8PkSDIxy1NUIkh30SWjV8Gc2KgtJkWJ2D/+BSdkW7
Mc2TOaiWUKWcXyvpgLettyd6rvKvcpG3p/vpSpspqHp5Kdp765wdtpghGSK//yac
H7vyKBm6MlUhK0OWJLhjS7RI6SDgJmKl8utFADc8jtPd+BVTbbh/ML4Ga2pc33IN
X+1oH56MWpTAY0SYvdh0qNm1l5hTz3boZJ+iuFD4uHaRzqDyPBuz/ACkUv/NuETd
rvILX3UGBSGmjzaXRnjggRNzRz9mESFDE2hU13nneYG4nAOrTrXrdCOZyBrSE0hu
8fylXpOcG4+IsqDC/tq7oDuTILLFwdFEcg1uPfaS9mijmWH4UjilZl9yl831Kqkg
lh6xHY6Pjdj2fDWNRbdISCGLRrlNvDw23tvpz3eNGH7oID2EWgfxeLmEHRRNH5L9
0aOus7CSQGplVbEXAQCKnw8gKc8l336qksRZPDa6VLIXiXsl8Qq8qvR8YhfiXKvC
whZLhoCM14pZHNqb6lEbGTLh3zDZ0QpDQhnYZDJPYpEDOZX3/+RufecrX+gv/+mB
jEs0beLLrAwW6thcKP7iRfiLX3gSejzCpZeTBpweFDZlfymou0CZcijgbkjB2dLP
PcCMn/xU6oSY13JJkHqTE66q1VzITe5GgOqFecOfArUdOMwbs4S4o/LNbK3kMczu
9jAfiBT/nz6AjzQxV+892t0u9AaodArhG50o1MUUL6GSItalpAutQwJJYSM1pXIR
U1eEcQzipND9hILGFEc1BBvp2zP4PVDLz19ktzmd6y+hiF9bziyGHTYp5sNb1q3N
GaCkZw9xAaxc4TNE1hIG0lYy8XaYW+l3IkYFZ/8RDyblX1Fa6OK3Gf7n8RqYEmp1
TUhRL7jRZU35Uxyi9NVXhzWhW/manVTNG0EPylJV0CyCTzrdzkAQkanuvkePAxd6
MdD78mHxhVRPT5vOVSpWsTCb6qZWk3UKrgbuB8BF0Nk7+APs9S5KqlK0P1vq1Lap
Nt8xjjkcYclMjlw0HT70Jvjm6myPs/1fA9zW7VLnHwpwJI4Rck50jpvOi7E5lIVA
121y3BtwcqOhleSiqOSaWNDuG87fBoggNX58ZqKUtIrgx8bsolWEcA8ODhGtEK1Y
xVfRdysUh5vFzImrd6A2pv1hoOzPWjAhkoGX43iL8+4o1wKYyvGxm4Uj/CeJVXJp
R9IFPrmtgo9/7o+dSoX/roW7SUQ8Jptt/LRZLGDsHuAbxg3hsuKCS75mlZamSuW8
Iu7haxGp0eWKo79dAwdG8Q==
-----END ENCRYPTED PRIVATE KEY-----
"""


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    files = {"ca": CA_PEM, "cert": CLIENT_PEM, "key": CLIENT_KEY}
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_text(text)
    return paths


def sasl(mechanism: str, **extra) -> Settings:
    return Settings(
        broker="kafka://k1:9093,kafka://k2:9093",
        sasl_mechanism=mechanism,
        sasl_username="churn",
        sasl_password=PASSWORD,
        **extra,
    )


def test_plaintext_by_default():
    settings = Settings()
    assert security_protocol(settings) == "PLAINTEXT"
    assert ssl_context(settings) is None
    assert faust_credentials(settings) is None
    assert aiokafka_options(settings) == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
        "ssl_context": None,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_without_tls(mechanism):
    settings = sasl(mechanism)
    options = aiokafka_options(settings)
    assert options["bootstrap_servers"] == "k1:9093,k2:9093"
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "churn"
    assert options["sasl_plain_password"] == PASSWORD  # unwrapped only for the client
    assert options["ssl_context"] is None
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == mechanism
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert (credentials.username, credentials.password) == ("churn", PASSWORD)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_over_tls_with_a_private_ca(mechanism, pki):
    settings = sasl(mechanism, ssl_cafile=pki["ca"])
    options = aiokafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("churn-stream test CA" in str(ca) for ca in context.get_ca_certs())
    credentials = faust_credentials(settings)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.ssl_context is not None


def test_tls_with_system_cas():
    settings = Settings(ssl=True)
    assert security_protocol(settings) == "SSL"
    context = ssl_context(settings)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"


def test_mutual_tls_with_an_encrypted_client_key(pki):
    settings = Settings(
        ssl_cafile=pki["ca"],
        ssl_certfile=pki["cert"],
        ssl_keyfile=pki["key"],
        ssl_key_password=KEY_PASSWORD,
    )
    assert security_protocol(settings) == "SSL"
    assert isinstance(ssl_context(settings), ssl.SSLContext)  # the key was decrypted


def test_wrong_key_password_fails_loudly(pki):
    settings = Settings(ssl_certfile=pki["cert"], ssl_keyfile=pki["key"], ssl_key_password="wrong")
    with pytest.raises(ssl.SSLError):
        ssl_context(settings)


def test_settings_from_the_environment(monkeypatch, pki):
    monkeypatch.setenv("CHURN_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("CHURN_SASL_USERNAME", "churn")
    monkeypatch.setenv("CHURN_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("CHURN_SSL_CAFILE", str(pki["ca"]))
    monkeypatch.setenv("CHURN_SSL_KEY_PASSWORD", KEY_PASSWORD)
    settings = Settings()
    assert isinstance(settings.sasl_password, SecretStr)
    assert isinstance(settings.ssl_key_password, SecretStr)
    assert aiokafka_options(settings)["security_protocol"] == "SASL_SSL"


def test_secrets_never_show(pki, caplog):
    settings = sasl("SCRAM-SHA-512", ssl_cafile=pki["ca"], ssl_key_password=KEY_PASSWORD)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        describe(settings),
        repr(faust_credentials(settings)),
    ]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("stream").info("settings %s %r", settings, settings)
        logging.getLogger("stream").info("%s", describe(settings))
    shown.append(caplog.text)
    for text in shown:
        assert PASSWORD not in text and KEY_PASSWORD not in text, text
    assert "SCRAM-SHA-512" in describe(settings) and "churn" in describe(settings)


@pytest.mark.parametrize(
    "values",
    [
        {"sasl_mechanism": "PLAIN"},
        {"sasl_mechanism": "PLAIN", "sasl_username": "u"},
        {"sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"},
        {"ssl_keyfile": "client.key"},
    ],
)
def test_incomplete_security_settings_are_rejected(values):
    with pytest.raises(ValidationError):
        Settings(**values)
