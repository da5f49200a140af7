"""A real OIDC token endpoint on loopback (the standard library's HTTP server) for the
OAUTHBEARER tests: the client-credentials grant with HTTP Basic client authentication, answering
unsecured JWS tokens (``alg: none``) that Kafka's unsecured validator accepts: ``sub`` is the
client id, ``scope`` the requested scope, ``exp`` the lifetime from now."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsecured_jws(subject: str, scope: str, lifetime: float) -> str:
    now = time.time()
    claims = {"sub": subject, "scope": scope, "iat": int(now), "exp": int(now + lifetime)}
    return f"{_b64({'alg': 'none'})}.{_b64(claims)}."


@dataclass
class TokenEndpoint:
    """``start()`` serves ``url``; each grant it answered is counted in ``issued``."""

    client_id: str
    client_secret: str
    lifetime: float = 300.0
    issued: int = 0
    refused: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/token"

    def start(self) -> TokenEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = endpoint.answer(self.headers.get("Authorization", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, authorization: str, body: bytes) -> tuple[int, dict[str, object]]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        scheme, _, encoded = authorization.partition(" ")
        user, _, secret = base64.b64decode(encoded or "").decode().partition(":")
        if scheme != "Basic" or (unquote(user), unquote(secret)) != (
            self.client_id,
            self.client_secret,
        ):
            with self._lock:
                self.refused += 1
            return 401, {"error": "invalid_client"}
        with self._lock:
            self.issued += 1
        scope = form.get("scope", "")
        token = unsecured_jws(self.client_id, scope, self.lifetime)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
