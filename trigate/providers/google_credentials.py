"""Google Cloud credentials for Vertex AI: an OAuth access token per request, refreshed
by google-auth's own flows before it expires.

`vertex_credentials` is LiteLLM's: a path to a credentials file, or the JSON itself
(a service account's key, an `authorized_user`, an external account...), which
`os.environ/NAME` may name. Without it, application default credentials
(`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, the metadata server) are found
the way every Google client finds them.

google-auth is blocking (it signs a JWT and POSTs it to the token URI, or asks the
metadata server), so a refresh runs in a worker thread, never on the event loop.
Concurrent requests that find the token stale wait for one refresh under a lock and
share its token: a burst after expiry costs the token server one request, not one
per request. google-auth counts a token that expires within a few minutes as stale,
so it is refreshed before it expires, not after a request failed with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import httpx
import trio
from google.auth.credentials import Credentials
from google.oauth2 import service_account

from trigate.errors import Failure, UpstreamError, from_upstream_status

SERVICE_ACCOUNT = "service_account"
CREDENTIAL_TYPES = (SERVICE_ACCOUNT, "authorized_user")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# A token request that takes longer is a token server that is down.
TOKEN_TIMEOUT = 30.0


class CredentialsError(Exception):
    """`vertex_credentials` cannot be read: said at start-up, naming the setting."""


def credentials_info(source: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The credentials JSON `vertex_credentials` gives (inline, or in the file it names);
    None for application default credentials. A local file of a few KB, read once when
    the deployment is built, as the config file itself is."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return None
    if isinstance(source, Mapping):
        return dict(source)
    text = source.strip()
    if not text.startswith("{"):
        try:
            text = Path(text).expanduser().read_text(encoding="utf-8")
        except OSError as error:
            raise CredentialsError(
                f"vertex_credentials names a file that cannot be read ({error.strerror})"
            ) from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        # Never quoted: the text is a private key.
        raise CredentialsError("vertex_credentials is not valid JSON") from None
    if not isinstance(info, dict) or info.get("type") not in CREDENTIAL_TYPES:
        # Other kinds (external accounts, impersonation) are read by google-auth's own
        # discovery, which checks them: GOOGLE_APPLICATION_CREDENTIALS names the file.
        raise CredentialsError(
            "vertex_credentials must be a service account's key or an authorized user's "
            "credentials (`type` service_account or authorized_user); for other kinds, set "
            "GOOGLE_APPLICATION_CREDENTIALS and leave vertex_credentials out"
        )
    return info


class GoogleToken:
    """One deployment's Google credentials, as the `authorization` header of a request."""

    def __init__(self, info: dict[str, Any] | None, problem: str | None = None) -> None:
        self._info = info
        # Why the deployment's settings cannot give a token: each request is refused so.
        self._problem = problem
        self._credentials: google.auth.credentials.Credentials | None = None
        self._refreshing = trio.Lock()
        # How many refreshes ran: read by tests, which count the token server's requests too.
        self.refreshes = 0

    async def headers(self) -> Mapping[str, str]:
        if self._problem is not None:
            raise UpstreamError(
                f"This Vertex AI deployment is not configured: {self._problem}.",
                kind=Failure.AUTH,
                # The gateway's configuration is at fault, not the client's key: not a 401.
                status=502,
                code="missing_credentials",
            )
        credentials = self._credentials
        if credentials is None or not credentials.valid:
            async with self._refreshing:
                credentials = self._credentials
                # Another request may have refreshed it while this one waited.
                if credentials is None or not credentials.valid:
                    credentials = await trio.to_thread.run_sync(self._refreshed, credentials)
                    self._credentials = credentials
        return {"authorization": f"Bearer {credentials.token}"}

    def _refreshed(
        self, credentials: google.auth.credentials.Credentials | None
    ) -> google.auth.credentials.Credentials:
        """In a worker thread: load the credentials the first time, then refresh them."""
        self.refreshes += 1
        try:
            if credentials is None:
                credentials = self._load()
            with httpx.Client(timeout=TOKEN_TIMEOUT) as client:
                # google-auth's methods are not annotated (here and below).
                credentials.refresh(_HttpxRequest(client))  # type: ignore[no-untyped-call]
        except google.auth.exceptions.GoogleAuthError as error:
            # The gateway's credentials were refused: its problem, a 401 from upstream.
            raise from_upstream_status(
                401, f"Vertex AI credentials could not be refreshed: {error}", {}
            ) from None
        return credentials

    def _load(self) -> google.auth.credentials.Credentials:
        info = self._info
        if info is None:
            credentials, _ = google.auth.default(scopes=SCOPES)
            return credentials
        if info["type"] == SERVICE_ACCOUNT:
            load = service_account.Credentials.from_service_account_info
            return cast(Credentials, load(info, scopes=SCOPES))  # type: ignore[no-untyped-call]
        user = google.oauth2.credentials.Credentials.from_authorized_user_info
        return cast(Credentials, user(info, SCOPES))  # type: ignore[no-untyped-call]


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's transport over httpx, which trigate already has (google-auth's own
    needs `requests`); only ever called in the refresh's worker thread."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            response = self._client.request(
                method, url, content=body, headers=headers, timeout=timeout or TOKEN_TIMEOUT
            )
        except httpx.HTTPError as error:
            failure = google.auth.exceptions.TransportError
            raise failure(type(error).__name__) from None  # type: ignore[no-untyped-call]
        return _Response(response)
