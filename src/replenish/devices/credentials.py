"""Per-device MQTT secrets: issued once at registration (or rotation), stored only as a hash.

The hash is Mosquitto's own password-file format (PBKDF2-SHA512, `$7$iterations$salt$hash`), so that one stored
value serves both brokers: the embedded broker's auth plugin verifies it, and the password file generated for
Mosquitto carries it as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# Mosquitto's default. The secrets are 192 random bits: iterations add nothing against guessing them, and a
# reconnect storm of a whole fleet must not cost seconds of CPU per device.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_BYTES = 64


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def hash_secret(secret: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    derived = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt, derived = stored.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(derived)
        actual = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(iterations), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
