#!/usr/bin/env python3
"""One scripted journey through the API with the Python client openapi-python-client generated
from openapi/outpost.json (the package `outpost_client`, put on PYTHONPATH by the harness).

    journey.py PRINCIPALS.json

Uses the base URL and the operator key from PRINCIPALS.json (written by provision.py) and makes
everything else itself: operator creates an org -> invites an owner -> accept -> login ->
refresh -> create room -> join -> channel -> post with an Idempotency-Key (the retry answers the
same message) -> history -> task with a dependency -> search -> document create + binary Yjs
update + versions -> API key -> files -> a service registered and called through the gateway ->
an OAuth provider (client credentials), its connection, and a service calling with its token ->
a deliberate 404 read as a typed Problem -> logout.

Every answer is read through the generated types: a step fails when the status is not the one
expected or when the parsed value is not of the generated class.
"""

import base64
import io
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from outpost_client import AuthenticatedClient, Client
from outpost_client.api.auth import accept_invitation, login, logout, refresh_tokens
from outpost_client.api.chat import create_channel, list_messages, post_message
from outpost_client.api.connections import (
    create_connection,
    create_o_auth_provider,
    list_connections,
    list_o_auth_templates,
)
from outpost_client.api.files import (
    append_upload,
    create_upload,
    download_asset,
    get_asset,
    upload_asset,
    upload_asset_form,
)
from outpost_client.api.docs import (
    apply_document_update,
    create_document,
    create_document_version,
    get_document_json,
    list_document_versions,
)
from outpost_client.api.me import create_api_key, get_me
from outpost_client.api.organizations import create_organization, create_organization_invitation
from outpost_client.api.rooms import create_room, get_room, join_room, list_rooms
from outpost_client.api.search import search
from outpost_client.api.services import create_service, proxy_service_post
from outpost_client.api.sso import create_sso_provider, get_sso_policy, list_sso_options, start_sso
from outpost_client.api.tasks import add_task_dependency, create_task
from outpost_client.models import (
    SsoOptions,
    SsoPolicy,
    SsoProvider,
    SsoProviderInput,
    SsoStart,
    SsoStartRequest,
    Connection,
    ConnectionInput,
    ConnectionList,
    OAuthGrant,
    OAuthProvider,
    OAuthProviderInput,
    OAuthProviderInputTemplate,
    OAuthTemplateList,
    AppendUploadTusResumable,
    Asset,
    AssetForm,
    CreateUploadTusResumable,
    AcceptInvitation,
    AppliedUpdate,
    Channel,
    ChannelKind,
    CreateApiKey,
    CreateChannel,
    CreatedApiKey,
    CreateOrganization,
    CreateRoom,
    Document,
    DocumentVersion,
    DocumentVersionPage,
    Invitation,
    LoginRequest,
    Me,
    Message,
    MessagePage,
    NewDocument,
    NewDocumentVersion,
    OperatorInvitation,
    Organization,
    Participant,
    PostMessage,
    Problem,
    RefreshRequest,
    Role,
    Room,
    RoomPage,
    RoomVisibility,
    SearchPage,
    NewService,
    ServiceCredentialInput,
    ServiceCredentialKind,
    ServiceWithSigningSecret,
    Task,
    NewTask,
    Permission,
    TokenPair,
    User,
)
from outpost_client.types import File

# A Yjs v1 update made by a fresh client (id 424242) that inserts this text at the start of the
# root text type "text": encodeStateAsUpdate of that document, as stock Yjs 13.6 writes it.
TEXT = "hello from the contract journey"
YJS_UPDATE = bytes.fromhex(
    "0101b2f21900040104746578741f68656c6c6f2066726f6d2074686520636f6e7472616374206a6f75726e657900"
)

STEPS = []


class _Service(BaseHTTPRequestHandler):
    """A service on loopback that answers what it was sent: method, path, key, body, identity."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        # An OpenID issuer's discovery document and keys, for an identity provider.
        base = f"http://{self.headers.get('host')}"
        docs = {
            "/.well-known/openid-configuration": {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/oauth/token",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            },
            "/jwks": {"keys": []},
        }
        if self.path not in docs:
            self.send_error(501)
            return
        out = json.dumps(docs[self.path]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/oauth/token":
            # An OAuth provider's token endpoint, for the client-credentials grant.
            ok = b"grant_type=client_credentials" in body and self.headers.get("authorization", "").startswith("Basic ")
            out = json.dumps(
                {"access_token": "journey-oauth-token", "token_type": "Bearer", "expires_in": 3600}
                if ok
                else {"error": "invalid_client"}
            ).encode()
            self.send_response(200 if ok else 400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        out = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "key": self.headers.get("x-api-key"),
                "authorization": self.headers.get("authorization"),
                "body": body.decode(),
                "identity": json.loads(self.headers.get("outpost-identity") or "null"),
                "signed": bool(self.headers.get("outpost-identity-signature")),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def start_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def step(name, resp, status, typ):
    """The parsed answer of `resp`, which must have `status` and parse to the generated `typ`."""
    ok = int(resp.status_code) == status and isinstance(resp.parsed, typ)
    STEPS.append((name, int(resp.status_code), ok))
    if not ok:
        body = resp.content.decode(errors="replace")[:600]
        raise SystemExit(
            f"journey.py: {name}: expected {status} {typ.__name__}, got {int(resp.status_code)} "
            f"{type(resp.parsed).__name__}: {body}"
        )
    print(f"  ok  {name}: {int(resp.status_code)} {typ.__name__}")
    return resp.parsed


def main():
    with open(sys.argv[1]) as f:
        env = json.load(f)
    base = env["base_url"]
    tag = uuid.uuid4().hex[:8]
    slug, username, password = f"journey-py-{tag}", f"ada-{tag}", "a long passphrase for ada"

    operator = AuthenticatedClient(base_url=base, token=env["operator_key"])
    anonymous = Client(base_url=base)

    org = step(
        "operator creates an organization",
        create_organization.sync_detailed(client=operator, body=CreateOrganization(slug=slug, name="Journey (Python)")),
        201,
        Organization,
    )
    inv = step(
        "operator invites an owner",
        create_organization_invitation.sync_detailed(
            org.id, client=operator, body=OperatorInvitation(email=f"ada-{tag}@example.org", role=Role.OWNER)
        ),
        201,
        Invitation,
    )
    user = step(
        "the owner accepts",
        accept_invitation.sync_detailed(
            client=anonymous, body=AcceptInvitation(token=inv.token, username=username, password=password)
        ),
        200,
        User,
    )
    pair = step(
        "the owner logs in",
        login.sync_detailed(client=anonymous, body=LoginRequest(org=slug, login=username, password=password)),
        200,
        TokenPair,
    )
    assert pair.user.id == user.id
    pair = step(
        "refresh",
        refresh_tokens.sync_detailed(client=anonymous, body=RefreshRequest(refresh_token=pair.refresh_token)),
        200,
        TokenPair,
    )
    ada = AuthenticatedClient(base_url=base, token=pair.access_token)

    room = step(
        "create a room",
        create_room.sync_detailed(client=ada, body=CreateRoom(name="Journey room", visibility=RoomVisibility.ORG)),
        201,
        Room,
    )
    step("join the room", join_room.sync_detailed(room.id, client=ada), 200, Participant)

    channel = step(
        "create a channel",
        create_channel.sync_detailed(client=ada, body=CreateChannel(kind=ChannelKind.PUBLIC, name=f"journey-{tag}")),
        201,
        Channel,
    )
    key = f"journey-{tag}"
    first = step(
        "post a message with an Idempotency-Key",
        post_message.sync_detailed(channel.id, client=ada, body=PostMessage(text=f"hello {tag}"), idempotency_key=key),
        201,
        Message,
    )
    again = step(
        "retry the post with the same key",
        post_message.sync_detailed(channel.id, client=ada, body=PostMessage(text=f"hello {tag}"), idempotency_key=key),
        201,
        Message,
    )
    assert again.id == first.id, f"the retry made another message: {again.id} != {first.id}"
    history = step("read the history", list_messages.sync_detailed(channel.id, client=ada, limit=50), 200, MessagePage)
    assert [m.id for m in history.items].count(first.id) == 1, "the message is in the history once"

    base_task = step(
        "create a task",
        create_task.sync_detailed(client=ada, body=NewTask(title=f"prepare the journey {tag}", room_id=room.id)),
        201,
        Task,
    )
    task = step(
        "create a second task",
        create_task.sync_detailed(client=ada, body=NewTask(title=f"run the journey {tag}", room_id=room.id)),
        201,
        Task,
    )
    task = step(
        "make the second depend on the first",
        add_task_dependency.sync_detailed(task.id, base_task.id, client=ada),
        200,
        Task,
    )

    # The search index follows the event log: give it a moment.
    deadline, found = time.monotonic() + 15, False
    while not found:
        page = step("search", search.sync_detailed(client=ada, q=tag), 200, SearchPage)
        found = any(h.id in (first.id, task.id, base_task.id) for h in page.items)
        if not found:
            if time.monotonic() > deadline:
                raise SystemExit(f"journey.py: search for {tag} found nothing in 15 s")
            time.sleep(0.5)

    doc = step(
        "create a document",
        create_document.sync_detailed(room.id, client=ada, body=NewDocument(name="journey notes")),
        201,
        Document,
    )
    step(
        "apply a binary Yjs update",
        apply_document_update.sync_detailed(
            doc.id, client=ada, body=File(payload=io.BytesIO(YJS_UPDATE), mime_type="application/octet-stream")
        ),
        200,
        AppliedUpdate,
    )
    content = get_document_json.sync_detailed(doc.id, client=ada)
    assert int(content.status_code) == 200 and TEXT in content.content.decode(), content.content[:300]
    version = step(
        "save a version",
        create_document_version.sync_detailed(doc.id, client=ada, body=NewDocumentVersion(label="first draft")),
        201,
        DocumentVersion,
    )
    versions = step(
        "list the versions", list_document_versions.sync_detailed(doc.id, client=ada), 200, DocumentVersionPage
    )
    assert version.id in [v.id for v in versions.items]

    created = step(
        "create an API key",
        create_api_key.sync_detailed(client=ada, body=CreateApiKey(name="journey", scopes=[Permission.ROOMS_READ])),
        201,
        CreatedApiKey,
    )
    keyed = AuthenticatedClient(base_url=base, token=created.token)
    rooms = step("list rooms with the API key", list_rooms.sync_detailed(client=keyed), 200, RoomPage)
    assert room.id in [r.id for r in rooms.items]

    # Files: a resumable (tus) upload in two appends, a one-request upload, a form, a ranged download.
    data = f"a file from the journey {tag}\n".encode() * 40
    b64 = lambda t: base64.b64encode(t.encode()).decode()
    resp = create_upload.sync_detailed(
        client=ada,
        tus_resumable=CreateUploadTusResumable.VALUE_0,
        upload_length=len(data),
        upload_metadata=f"filename {b64('journey.txt')},filetype {b64('text/plain')}",
    )
    step("begin a resumable upload", resp, 201, object)
    upload_id = resp.headers["location"].rsplit("/", 1)[1]
    half = len(data) // 2
    for name, start, chunk in (("send the first half", 0, data[:half]), ("send the rest", half, data[half:])):
        resp = append_upload.sync_detailed(
            upload_id,
            client=ada,
            body=File(payload=io.BytesIO(chunk), mime_type="application/offset+octet-stream"),
            tus_resumable=AppendUploadTusResumable.VALUE_0,
            upload_offset=start,
        )
        step(name, resp, 204, object)
        assert int(resp.headers["upload-offset"]) == start + len(chunk), resp.headers
    asset = step("the upload is a file", get_asset.sync_detailed(upload_id, client=ada), 200, Asset)
    assert asset.size == len(data) and asset.content_type == "text/plain", asset
    small = step(
        "upload a small file in one request",
        upload_asset.sync_detailed(
            client=ada, name="note.txt", body=File(payload=io.BytesIO(b"a note"), mime_type="text/plain")
        ),
        201,
        Asset,
    )
    assert small.size == 6, small
    form = step(
        "upload a file as a form",
        upload_asset_form.sync_detailed(
            client=ada,
            body=AssetForm(
                file=File(payload=io.BytesIO(b"a form's file"), file_name="form.txt", mime_type="text/plain"),
                name="from a form.txt",
            ),
        ),
        201,
        Asset,
    )
    assert (form.name, form.size, form.content_type) == ("from a form.txt", 13, "text/plain"), form
    part = download_asset.sync_detailed(asset.id, client=ada, range_="bytes=0-9")
    STEPS.append(("download a range", int(part.status_code), int(part.status_code) == 206))
    assert int(part.status_code) == 206 and part.content == data[:10], (part.status_code, part.content[:40])
    print(f"  ok  download a range: {int(part.status_code)}")

    made = step(
        "register a service with an API key",
        create_service.sync_detailed(
            client=ada,
            body=NewService(
                name="Tickets",
                base_url=start_service(),
                credential=ServiceCredentialInput(kind=ServiceCredentialKind.API_KEY, secret="journey-key"),
            ),
        ),
        201,
        ServiceWithSigningSecret,
    )
    assert made.signing_secret.startswith("whsec_") and made.service.credential.kind == "api_key", made
    called = step(
        "call it through the gateway",
        proxy_service_post.sync_detailed(
            made.service.id, "tickets/7", client=ada, body=File(payload=io.BytesIO(b'{"title": "printer"}'))
        ),
        200,
        File,
    )
    seen = json.loads(called.payload.read())
    assert (seen["method"], seen["path"], seen["key"]) == ("POST", "/tickets/7", "journey-key"), seen
    assert seen["body"] == '{"title": "printer"}' and seen["identity"]["role"] == "owner" and seen["signed"], seen

    templates = step("list the OAuth provider templates", list_o_auth_templates.sync_detailed(client=ada), 200, OAuthTemplateList)
    assert any(t.key == "generic_oidc" for t in templates.items) and templates.redirect_uri.endswith("/v1/oauth/callback")
    provider = step(
        "add an OAuth provider (client credentials)",
        create_o_auth_provider.sync_detailed(
            client=ada,
            body=OAuthProviderInput(
                template=OAuthProviderInputTemplate.CUSTOM,
                grant=OAuthGrant.CLIENT_CREDENTIALS,
                token_url=f"{made.service.base_url}/oauth/token",
                client_id="journey",
                client_secret="journey-client-secret",
            ),
        ),
        201,
        OAuthProvider,
    )
    assert provider.has_client_secret and provider.grant == "client_credentials", provider
    conn = step(
        "connect with client credentials",
        create_connection.sync_detailed(client=ada, body=ConnectionInput(provider_id=provider.id)),
        201,
        Connection,
    )
    assert conn.status == "active" and conn.owner == "org", conn
    oauth_service = step(
        "register a service that calls with the connection",
        create_service.sync_detailed(
            client=ada,
            body=NewService(
                name="Tickets (OAuth)",
                base_url=made.service.base_url,
                credential=ServiceCredentialInput(kind=ServiceCredentialKind.OAUTH_CONNECTION, connection_id=conn.id),
            ),
        ),
        201,
        ServiceWithSigningSecret,
    )
    called = step(
        "call it with the connection's token",
        proxy_service_post.sync_detailed(
            oauth_service.service.id, "tickets", client=ada, body=File(payload=io.BytesIO(b"{}"))
        ),
        200,
        File,
    )
    assert json.loads(called.payload.read())["authorization"] == "Bearer journey-oauth-token"
    listed = step("list connections", list_connections.sync_detailed(client=ada), 200, ConnectionList)
    assert [c.id for c in listed.items] == [conn.id], listed

    idp = step(
        "add an identity provider (single sign-on)",
        create_sso_provider.sync_detailed(
            client=ada,
            body=SsoProviderInput(issuer=made.service.base_url, client_id="journey-sso", client_secret="sso-secret", jit=True),
        ),
        201,
        SsoProvider,
    )
    assert idp.has_client_secret and idp.redirect_uri.endswith("/v1/auth/sso/callback"), idp
    options = step("an organization's sign-in options", list_sso_options.sync_detailed(client=anonymous, org=slug), 200, SsoOptions)
    assert [p.id for p in options.providers] == [idp.id] and not options.required, options
    started = step("start signing in through it", start_sso.sync_detailed(client=anonymous, body=SsoStartRequest(org=slug)), 201, SsoStart)
    assert started.authorization_url.startswith(f"{made.service.base_url}/authorize?"), started
    assert "code_challenge_method=S256" in started.authorization_url and "nonce=" in started.authorization_url
    policy = step("read the single sign-on policy", get_sso_policy.sync_detailed(client=ada), 200, SsoPolicy)
    assert policy.required is False, policy

    problem = step(
        "a room that does not exist is a typed Problem",
        get_room.sync_detailed(str(uuid.uuid4()), client=ada),
        404,
        Problem,
    )
    assert problem.status == 404 and problem.code, problem

    step("log out", logout.sync_detailed(client=ada), 204, object)
    problem = step("the token no longer works", get_me.sync_detailed(client=ada), 401, Problem)
    assert problem.code, problem
    print(f"journey.py: {len(STEPS)} steps passed")


if __name__ == "__main__":
    main()
