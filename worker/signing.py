"""DKIM signatures (RFC 6376) with dkimpy, when ``DKIM_DOMAIN``, ``DKIM_SELECTOR`` and
``DKIM_PRIVATE_KEY_FILE`` are set.

The signature covers ``SIGNED``: From, To, Subject, Date, Message-ID, the unsubscribe and
threading headers and the MIME structure; a header a message lacks is signed as absent, so it
cannot be added on the way. Canonicalization is relaxed/relaxed, which survives the header
refolding relays do. Signed messages are built with quoted-printable bodies: a relay that
meets a server without 8BITMIME would re-encode an 8bit body and break the body hash (RFC 6376
5.3). The key is an RSA key in PEM (PKCS#1 or PKCS#8); its text never reaches a log or an
error message. dkimpy's RSA is pure Python: a signature costs a few milliseconds of CPU.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import dkim.crypto

SIGNED = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"in-reply-to",
    b"references",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"content-language",
)


def read_private_key(path: Path) -> bytes:
    """The PEM key in ``path``; ValueError (naming the file, never its content) otherwise."""
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    try:
        dkim.crypto.parse_pem_private_key(key)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a PEM RSA private key") from exc
    return key


class DkimSigner:
    def __init__(self, domain: str, selector: str, key: bytes) -> None:
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._key = key

    @classmethod
    def from_file(cls, domain: str, selector: str, path: Path) -> DkimSigner:
        return cls(domain, selector, read_private_key(path))

    def sign(self, data: bytes) -> bytes:
        """``data`` (a message with CRLF line ends) with its DKIM-Signature header first;
        ValueError when dkimpy cannot sign it."""
        try:
            header: bytes = dkim.sign(
                data,
                self._selector,
                self._domain,
                self._key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(SIGNED),
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            raise ValueError(f"DKIM signing failed: {exc}") from exc
        return header + data
