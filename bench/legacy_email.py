"""The reference way to build an email: ``email.message.EmailMessage`` with the SMTP policy,
as the worker did before it built MIME by hand (its ``SmtpSender.build`` up to commit
367325f). The naive baseline sends these, and the micro benchmark times them next to the
worker's current builder.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

from worker.channels import Outgoing, idempotency_key


def build_email_message(from_: str, reply_to: str | None, message: Outgoing) -> EmailMessage:
    mail = EmailMessage(policy=SMTP)
    mail["From"] = from_
    mail["To"] = Address(display_name=message.recipient_name or "", addr_spec=message.address)
    if reply_to:
        mail["Reply-To"] = reply_to
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(from_)[1].rpartition("@")[2]
    mail["Message-ID"] = f"<{idempotency_key(message.event_id, 'email')}@{domain}>"
    mail.set_content(message.text, cte="quoted-printable")
    mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    mail["Content-Language"] = message.locale  # after set_content, which drops Content-*
    return mail
