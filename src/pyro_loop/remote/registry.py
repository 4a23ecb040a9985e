"""The registry protocol (OCI distribution), through the ORAS Python SDK.

ORAS builds the requests: repository URLs, the blob existence check before an upload, the
upload session and its Location handling, monolithic or chunked uploads, manifest schema
validation, the bearer-token exchange of GitHub's, GitLab's or Harbor's registries. pyro
replaces only how a request is sent (`do_request`), for three reasons:
- bounded time: every request has a connect and a read timeout (CONNECT_TIMEOUT,
  READ_TIMEOUT); the SDK sets none, so an unreachable registry could hang a prepare;
- no blind retries: the SDK retries any failure five times with growing sleeps (minutes in
  all), while an offline registry must cost a prepare one line, not minutes;
- authentication from pyro's credentials (credentials.py) for both the Basic scheme of a
  plain `distribution` registry with htpasswd and the Bearer scheme, sent up front once the
  registry has asked for it, so an upload's body is not sent twice; and a docker identity
  token exchanged for an access token with OAuth2's refresh-token grant, which the SDK
  lacks (it only asks the token service with a GET and Basic credentials).
Every failure becomes a RemoteError with one line that names the registry, never the secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyro_loop.errors import PyroError
from pyro_loop.remote.address import Remote, is_loopback
from pyro_loop.remote.credentials import Credentials, find_credentials

if TYPE_CHECKING:
    import requests

CONNECT_TIMEOUT = float(os.environ.get("PYRO_CACHE_CONNECT_TIMEOUT", "5"))
READ_TIMEOUT = float(os.environ.get("PYRO_CACHE_READ_TIMEOUT", "30"))
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_CHUNKED_ABOVE = 64 << 20  # larger blobs go up in chunks rather than one request in memory
_CHUNK = 1 << 20


class RemoteError(PyroError):
    """The registry could not be used: unreachable, refused the login, or answered wrongly."""


class RemoteUnavailableError(RemoteError):
    """The registry did not answer in time, or could not be connected to."""


class BlobMismatchError(RemoteError):
    """A downloaded blob is not what the manifest says (tampered with, or cut short)."""


class _DeniedError(Exception):
    """The registry answered 401/403 even after the login was offered (or there was none)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RegistryClient:
    """One repository of one registry."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.credentials = find_credentials(remote.registry)
        self._registry = _make_registry(remote, self.credentials)

    # -- manifests ------------------------------------------------------------------------------

    def get_manifest(self, tag: str) -> dict[str, Any] | None:
        """The manifest tagged `tag`, or None when the repository has no such tag."""
        url = f"{self._prefix}://{self._container(tag).manifest_url()}"
        response = self._call(
            "reading the manifest",
            lambda: self._registry.do_request(url, "GET", headers={"Accept": MANIFEST_MEDIA_TYPE}),
        )
        if response.status_code == 404:
            return None
        self._check(response, "reading the manifest")
        try:
            manifest: dict[str, Any] = response.json()
        except ValueError:
            raise RemoteError(f"{self.remote}: the manifest for {tag[:12]} is not JSON") from None
        return manifest

    def put_manifest(self, manifest: dict[str, Any], tag: str) -> None:
        container = self._container(tag)
        response = self._call(
            "uploading the manifest", lambda: self._registry.upload_manifest(manifest, container)
        )
        self._check(response, "uploading the manifest")

    # -- blobs ----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        url = f"{self._prefix}://{self._container().get_blob_url(digest)}"
        response = self._call("checking a blob", lambda: self._registry.do_request(url, "HEAD"))
        if response.status_code == 404:
            return False
        self._check(response, "checking a blob")
        return True

    def push_blob(self, path: str, *, digest: str, size: int, media_type: str) -> None:
        """Upload the file at `path` (the registry checks it against `digest`)."""
        layer = {"digest": digest, "size": size, "mediaType": media_type}
        response = self._call(
            "uploading a layer",
            lambda: self._registry.upload_blob(
                path, self._container(), layer,
                do_chunked=size > _CHUNKED_ABOVE, chunk_size=16 * _CHUNK,
            ),
        )  # fmt: skip
        self._check(response, "uploading a layer")

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int) -> Iterator[BlobStream]:
        """Blob `digest` as a stream read while it downloads; `BlobStream.verify` checks
        its length and digest once it is read (the caller trusts nothing before that)."""
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256" or len(expected) != 64:
            raise RemoteError(f"{self.remote}: unsupported blob digest {digest[:20]!r}")
        what = "downloading a layer"
        response = self._call(
            what, lambda: self._registry.get_blob(self._container(), digest, stream=True)
        )
        with response:
            self._check(response, what)
            yield BlobStream(self, response, digest, size)

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def _prefix(self) -> str:
        return self.remote.scheme

    def _container(self, tag: str = "latest") -> Any:
        import oras.container

        container = oras.container.Container(f"pyro:{tag}", registry=self.remote.registry)
        # Set the parts explicitly: the SDK's parser would take a first component that
        # contains a dot (`my.team/cache`) for a registry name.
        namespace, _, name = self.remote.repository.rpartition("/")
        container.registry, container.namespace, container.repository = (
            self.remote.registry,
            namespace or None,
            name,
        )
        return container

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        import requests

        try:
            return action()
        except RemoteError:
            raise
        except (_DeniedError, requests.exceptions.RequestException, ValueError) as exc:
            raise self._failure(what, exc) from None

    def _failure(self, what: str, exc: Exception) -> RemoteError:
        """The one line for a request that failed with `exc`."""
        import requests

        if isinstance(exc, _DeniedError):
            return self._denied(exc.status, what)
        if isinstance(exc, requests.exceptions.SSLError):
            return RemoteError(
                f"{self.remote}: TLS failed while {what}: {_reason(exc)}",
                hint="a registry without TLS must be named with http:// explicitly",
            )
        # A connection that broke mid-body (ChunkedEncodingError) is the registry gone too.
        gone = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError)  # fmt: skip
        if isinstance(exc, gone):
            return RemoteUnavailableError(
                f"{self.remote}: registry unreachable while {what}: {_reason(exc)}"
            )
        return RemoteError(f"{self.remote}: failed while {what}: {_reason(exc)}")

    def _check(self, response: requests.Response, what: str) -> None:
        code = response.status_code
        if code in (200, 201, 202, 204):
            return
        if code in (401, 403):
            raise self._denied(code, what)
        raise RemoteError(f"{self.remote}: HTTP {code} while {what}{_registry_error(response)}")

    def _denied(self, code: int, what: str) -> RemoteError:
        source = self.credentials.source if self.credentials else None
        return RemoteError(
            f"{self.remote}: the registry refused "
            + (f"the login from {source}" if source else "anonymous access")
            + f" while {what} (HTTP {code})",
            hint="log in with `docker login` or `podman login`, or set "
            "PYRO_CACHE_USERNAME and PYRO_CACHE_PASSWORD",
        )


class BlobStream:
    """A blob as it downloads: `read` hashes and counts what it hands out, never more than
    the manifest's length; `verify` reads the rest and checks length and digest."""

    def __init__(
        self, client: RegistryClient, response: requests.Response, digest: str, size: int
    ) -> None:
        self.client, self.digest, self.size = client, digest, size
        self.received = 0
        self._hasher = hashlib.sha256()
        self._chunks = response.iter_content(chunk_size=_CHUNK)
        self._left = b""

    def read(self, count: int = -1) -> bytes:
        if not self._left:
            import requests

            try:
                chunk = next(self._chunks, b"")
            except requests.exceptions.RequestException as exc:
                raise self.client._failure("downloading a layer", exc) from None
            self.received += len(chunk)
            if self.received > self.size:
                raise BlobMismatchError(
                    f"{self.client.remote}: layer blob {self._short} is longer than the "
                    f"{self.size} bytes its manifest says: refused (tampered with)"
                )
            self._hasher.update(chunk)
            self._left = chunk
        if count < 0 or count >= len(self._left):
            data, self._left = self._left, b""
        else:
            data, self._left = self._left[:count], self._left[count:]
        return data

    def verify(self) -> None:
        """Read what is left, then raise BlobMismatchError unless the blob is exactly the
        one the manifest names."""
        while self.read(_CHUNK):
            pass
        if self.received != self.size:
            raise BlobMismatchError(
                f"{self.client.remote}: layer blob {self._short} has {self.received} bytes, "
                f"its manifest says {self.size}: refused (tampered with or cut short)"
            )
        if self._hasher.hexdigest() != self.digest.removeprefix("sha256:"):
            raise BlobMismatchError(
                f"{self.client.remote}: layer blob {self._short} does not match its digest: "
                "refused (tampered with or damaged)"
            )

    @property
    def _short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


def _make_registry(remote: Remote, credentials: Credentials | None) -> Any:
    import oras.auth.utils
    import oras.provider
    import requests
    import requests.adapters

    class _TimeoutAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = (CONNECT_TIMEOUT, READ_TIMEOUT)
            return super().send(request, **kwargs)

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        authorization: dict[str, str] = {}  # noqa: RUF012 (set per instance on first use)

        def do_request(  # noqa: PLR0917 (the SDK's signature)
            self,
            url: str,
            method: str = "GET",
            data: Any = None,
            headers: dict[str, str] | None = None,
            json: dict[str, Any] | None = None,
            stream: bool = False,
        ) -> requests.Response:
            def send() -> requests.Response:
                sent = {**(headers or {}), **self.authorization}
                response: requests.Response = self.session.request(
                    method, url, data=data, json=json, headers=sent, stream=stream,
                    verify=self._tls_verify,
                )  # fmt: skip
                return response

            response = send()
            if response.status_code == 403:
                raise _DeniedError(403)
            if response.status_code != 401:
                return response
            challenge = response.headers.get("Www-Authenticate", "")
            response.close()
            authorization = self._authorize(challenge)
            if authorization is None:
                raise _DeniedError(401)
            self.authorization = authorization
            response = send()
            if response.status_code in (401, 403):
                response.close()
                raise _DeniedError(response.status_code)
            return response

        def _authorize(self, challenge: str) -> dict[str, str] | None:
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "basic":
                basic = credentials.basic if credentials else None
                return {"Authorization": f"Basic {basic}"} if basic else None
            if scheme == "bearer":
                header = oras.auth.utils.parse_auth_header(challenge)
                if credentials is not None and credentials.identity_token:
                    token = self._exchange(header, credentials.identity_token)
                else:
                    token = self.auth.request_token(header)
                return {"Authorization": f"Bearer {token}"} if token else None
            return None

        def _exchange(self, header: Any, identity_token: str) -> str | None:
            """An access token for an identity token: the OAuth2 refresh-token grant at the
            registry's token service (the distribution spec's `POST /token`), as docker and
            oras-go do it; the ORAS Python SDK has no such exchange."""
            realm = str(header.realm or "")
            if not realm.startswith("https://") and not (
                realm.startswith("http://") and is_loopback(urlsplit(realm).netloc)
            ):
                return None  # an identity token never travels in the clear, or nowhere
            form = {"grant_type": "refresh_token", "refresh_token": identity_token,
                    "client_id": "pyro", "service": str(header.service or "")}  # fmt: skip
            if header.scope:
                form["scope"] = str(header.scope)
            response = self.session.post(realm, data=form, verify=self._tls_verify)
            with response:
                if response.status_code != 200:
                    return None
                answer = response.json()
            token = answer.get("access_token") or answer.get("token")
            return str(token) if token else None

    registry = _Registry(
        hostname=remote.registry, insecure=remote.plain_http, tls_verify=_ca_bundle()
    )
    registry.authorization = {}
    adapter = _TimeoutAdapter()
    registry.session.mount("http://", adapter)
    registry.session.mount("https://", adapter)
    if credentials is not None and credentials.basic:
        registry.auth._basic_auth = credentials.basic  # the token exchange logs in with it
    # The SDK would read ~/.docker/config.json itself, over the order credentials.py keeps.
    registry.auth.load_configs = lambda *args, **kwargs: None
    _quiet_sdk_logger()
    return registry


def _ca_bundle() -> str | bool:
    """The certificates a registry's TLS is checked against: the bundle REQUESTS_CA_BUNDLE or
    SSL_CERT_FILE names, else the system's (a company CA installed there works), else the
    one requests ships."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    return SYSTEM_CA_BUNDLE if os.path.isfile(SYSTEM_CA_BUNDLE) else True


def _quiet_sdk_logger() -> None:
    """The SDK prints its log to the console; pyro's library never prints (its errors say
    what happened), so the SDK's log handlers are taken away."""
    import oras.logger

    oras.logger.logger.log_handler = []


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 nests the cause in a long repr: the last part says what happened.
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip("()'\" ")[:160] or type(exc).__name__


def _registry_error(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        message = errors[0].get("message") if errors and isinstance(errors[0], dict) else None
    except (ValueError, AttributeError):
        message = None
    return f": {str(message)[:160]}" if message else ""
