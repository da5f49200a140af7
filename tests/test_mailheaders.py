"""Threading, unsubscribe and DKIM headers of the built message, read back by the standard
library and verified by dkimpy; and the settings that configure them."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dkim
import pytest

from tests.test_settings import ROOT, SetEnv, clean_environ, env, problems_of  # noqa: F401
from worker.addresses import UNSUBSCRIBE_FIELDS, unsubscribe_template
from worker.channels import Outgoing
from worker.channels.mailheaders import Unsubscribe, thread_root
from worker.channels.mime import MimeBuilder
from worker.signing import DkimSigner, read_private_key

MESSAGE = Outgoing(
    channel="email",
    event_id="e-1",
    status="shipped",
    locale="vi",
    address="an+orders@example.com",
    recipient_name="Nguyễn Văn An",
    text="Xin chào\n",
    subject="Đơn hàng ORD-5521 tại Cửa hàng Sen",
    html="<p>Xin chào</p>",
    order_id="ORD-5521",
    customer_id="C 7/ü",
)
URL = "https://shop.example/unsubscribe?c={customer_id}&e={email}&o={order_id}"


def private_key(tmp_path: Path) -> Path:
    path = tmp_path / "dkim.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def public_record(key_file: Path) -> bytes:
    """The TXT record a DNS server would publish for the key: v=DKIM1; k=rsa; p=<base64>."""
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key_file), "-pubout", "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    import base64

    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def test_every_email_of_an_order_names_the_same_root() -> None:
    """Two statuses of one order reply to and reference one root Message-ID on the sender's
    domain; another order gets another root; each email keeps its own Message-ID."""
    builder = MimeBuilder("Shop <no-reply@shop.example>", None)
    first = email.message_from_bytes(builder.build(MESSAGE).data, policy=email.policy.default)
    later = replace(MESSAGE, event_id="e-2", status="delivered")
    second = email.message_from_bytes(builder.build(later).data, policy=email.policy.default)
    root = thread_root("ORD-5521", "shop.example")
    assert root.endswith("@shop.example>") and "ORD" not in root
    for parsed in (first, second):
        assert parsed["In-Reply-To"] == root and parsed["References"] == root
    assert first["Message-ID"] != second["Message-ID"]
    assert thread_root("ORD-5522", "shop.example") != root


def test_list_unsubscribe_escapes_each_field_and_offers_one_click() -> None:
    """The https link has every field percent-escaped, the mailto follows it, and the
    One-Click header is present (RFC 8058)."""
    builder = MimeBuilder(
        "Shop <no-reply@shop.example>", None, Unsubscribe(URL, "unsubscribe@shop.example")
    )
    parsed = email.message_from_bytes(builder.build(MESSAGE).data, policy=email.policy.default)
    assert str(parsed["List-Unsubscribe"]) == (
        "<https://shop.example/unsubscribe?c=C%207%2F%C3%BC&e=an%2Borders%40example.com"
        "&o=ORD-5521>, <mailto:unsubscribe@shop.example?subject=unsubscribe>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_message_without_a_field_the_link_needs_gets_no_https_link() -> None:
    """Without customer.id the link would be wrong: only the mailto is offered, and without
    One-Click (it needs an https URI); with neither, no header at all."""
    unsubscribe = Unsubscribe(URL, "unsubscribe@shop.example")
    assert unsubscribe.headers(replace(MESSAGE, customer_id=None)) == [
        "List-Unsubscribe: <mailto:unsubscribe@shop.example?subject=unsubscribe>"
    ]
    assert Unsubscribe(URL, None).headers(replace(MESSAGE, customer_id=None)) == []
    assert Unsubscribe(None, None).headers(MESSAGE) == []


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("http://shop.example/u?e={email}", "https"),
        ("https://shop.example/u?e={mail}", "{mail}: the fields are"),
        ("https://shop.example/u?e={email!r}", "{email}: the fields are"),
        ("https://shop.example/u?e={email:>9}", "{email}: the fields are"),
        ("https://shop.example/u?e={email", "not a format template"),
        ("https://shop example/u", "https"),
    ],
)
def test_an_unsubscribe_template_is_checked(template: str, says: str) -> None:
    """Only the named fields, no conversions or format specs, and an https URL."""
    with pytest.raises(ValueError) as caught:
        unsubscribe_template(template)
    assert says in str(caught.value)


def test_the_template_fields_are_the_ones_filled() -> None:
    """Every field the settings allow is filled for a message (one list, two users)."""
    template = "https://s.example/?" + "&".join(f"{f}={{{f}}}" for f in UNSUBSCRIBE_FIELDS)
    (listed, _) = Unsubscribe(unsubscribe_template(template), None).headers(MESSAGE)
    assert "{" not in listed and "=&" not in listed


def test_a_signed_message_verifies_and_covers_the_required_headers(tmp_path: Path) -> None:
    """The DKIM signature verifies against the published key, lists From, To, Subject,
    Date, Message-ID, the unsubscribe and threading headers, and breaks when one changes."""
    key = private_key(tmp_path)
    builder = MimeBuilder("Shop <no-reply@shop.example>", None, Unsubscribe(URL, None))
    signed = DkimSigner.from_file("shop.example", "s1", key).sign(builder.build(MESSAGE).data)
    record = public_record(key)

    def dns(name: bytes, timeout: float = 5) -> bytes:
        assert name == b"s1._domainkey.shop.example."
        return record

    assert dkim.verify(signed, dnsfunc=dns)
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    tags = dict(
        t.strip().split("=", 1) for t in "".join(str(parsed["DKIM-Signature"]).split()).split(";")
    )
    signed_headers = set(tags["h"].split(":"))
    assert {
        "from", "to", "subject", "date", "message-id", "list-unsubscribe",
        "list-unsubscribe-post", "in-reply-to", "references",
    } <= signed_headers  # fmt: skip
    tampered = signed.replace(
        b"List-Unsubscribe: <https://shop.example/", b"List-Unsubscribe: <https://evil.example/"
    )
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_key_file_that_is_no_key_is_one_line_naming_the_variable(
    env: SetEnv,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A missing file or one that holds no PEM key stops start-up with one line naming
    DKIM_PRIVATE_KEY_FILE, without the file's content; the DKIM settings go together."""
    bad = tmp_path / "key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXN0dWZm\n-----END PRIVATE KEY-----\n")
    (line,) = problems_of(env, DKIM_DOMAIN="shop.example")
    assert "must be set together" in line
    dkim_env = {"DKIM_DOMAIN": "shop.example", "DKIM_SELECTOR": "s1"}
    (line,) = problems_of(env, **dkim_env, DKIM_PRIVATE_KEY_FILE=str(bad))
    assert line.startswith("DKIM_PRIVATE_KEY_FILE: ") and "is not a PEM RSA private key" in line
    assert "c2VjcmV0" not in line
    (line,) = problems_of(env, **dkim_env, DKIM_PRIVATE_KEY_FILE=str(tmp_path / "none.pem"))
    assert "cannot read" in line and "No such file or directory" in line
    with pytest.raises(ValueError):
        read_private_key(bad)


def test_the_cli_exits_2_on_a_bad_dkim_key(tmp_path: Path) -> None:
    """``python -m worker run`` with a key file that is no key: exit 2, one stderr line."""
    bad = tmp_path / "key.pem"
    bad.write_text("not a key\n")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env={
            **clean_environ(),
            "DKIM_DOMAIN": "shop.example",
            "DKIM_SELECTOR": "s1",
            "DKIM_PRIVATE_KEY_FILE": str(bad),
        },
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("configuration error: DKIM_PRIVATE_KEY_FILE: ")
