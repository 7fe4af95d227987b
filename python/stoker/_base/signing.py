"""Optional signing of every stored pickle with a shared secret.

With ``Queue(path, secret=...)``, every payload the caller stores (a
schedule's arguments too), every result a worker sends back and every pickled
exception of an error record is prefixed with an HMAC-SHA256 of its bytes. A
worker checks a payload's signature before unpickling it, and a caller (or
the CLI) checks a result's or an error record's: bytes that were written by
someone without the secret are refused with
:class:`~stoker.errors.SecurityError` and never unpickled (unpickling runs
code, so a row forged in the database must not be). Error records stoker
writes itself carry no pickle (``remote_errors.rebuild`` makes them from
their type name).
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import SecurityError

#: Marks signed bytes; a version byte leaves room for another scheme.
MAGIC = b"STK\x01"
DIGEST_SIZE = hashlib.sha256().digest_size


def seal(secret: bytes, data: bytes) -> bytes:
    """``data`` prefixed with its signature."""
    return MAGIC + hmac.new(secret, data, hashlib.sha256).digest() + data


def unseal(secret: bytes, sealed: bytes, *, job_id: int | None, what: str) -> bytes:
    """The data inside ``sealed``; :class:`SecurityError` if the signature is missing or wrong."""
    header = len(MAGIC) + DIGEST_SIZE
    if len(sealed) < header or not sealed.startswith(MAGIC):
        raise SecurityError(job_id, what)
    signature, data = sealed[len(MAGIC) : header], sealed[header:]
    if not hmac.compare_digest(signature, hmac.new(secret, data, hashlib.sha256).digest()):
        raise SecurityError(job_id, what)
    return data


class Sealer:
    """Signs and checks the pickles of one queue: one object for every layer that stores or reads them.

    Without a secret it leaves bytes as they are; :attr:`secret` is what a
    worker process is given to do the same.
    """

    __slots__ = ("secret",)

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret

    @property
    def signs(self) -> bool:
        """Whether this queue signs its pickles."""
        return self.secret is not None

    def seal(self, data: bytes) -> bytes:
        return data if self.secret is None else seal(self.secret, data)

    def unseal(self, data: bytes, *, job_id: int | None, what: str) -> bytes:
        return data if self.secret is None else unseal(self.secret, data, job_id=job_id, what=what)


def as_secret(secret: str | bytes | None) -> bytes | None:
    if secret is None:
        return None
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        from ..errors import InvalidOptionError

        raise InvalidOptionError("secret must not be empty")
    return key
