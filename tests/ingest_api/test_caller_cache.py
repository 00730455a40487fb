"""A verified caller is remembered for AUTH_CACHE_SECONDS, so accepting an event needs
no PostgreSQL round trip; App Password revocation is still refused at once, on every
endpoint, because the publish script and the status read check Redis's revocation mark."""

import pytest
import sqlalchemy as sa

from shared import db
from tests.support.error_answers import assert_unauthorized
from tests.support.operator_commands import OperatorCliRunner


@pytest.mark.parametrize("credential", ["app_password", "jwt"])
def test_a_cached_caller_is_accepted_without_touching_postgresql(billing, app, statements, credential):
    token = getattr(billing, credential)
    assert billing.post(token=token).status_code == 202  # verifies and caches the caller (and the catalog)
    app.extensions["catalog"].ttl_seconds = 60  # the catalog, too, is served from memory
    assert billing.post(token=token).status_code == 202
    statements.clear()

    assert billing.post(token=token).status_code == 202

    assert statements == []


def _revoke(app, billing):
    result = OperatorCliRunner(app).invoke(
        args=["app-passwords", "revoke", "--user", str(billing.caller.id), "--name", "ingest"]
    )
    assert result.exit_code == 0, result.output


def test_a_revoked_cached_app_password_cannot_post_a_batch(billing, app):
    assert billing.post().status_code == 202
    _revoke(app, billing)

    assert_unauthorized(billing.post_batch([billing.body()]))
    assert len(billing.queued()) == 1


@pytest.mark.parametrize("endpoint", ["single", "batch"])
def test_a_revoked_cached_app_password_cannot_replay_its_idempotency_key(billing, app, endpoint):
    # A replay would answer the earlier event's id and status: the caller's no more.
    if endpoint == "single":
        send = lambda: billing.post(idempotency_key="order-6")  # noqa: E731
    else:
        send = lambda: billing.post_batch([billing.body() | {"idempotency_key": "order-6"}])  # noqa: E731
    first = send()
    assert first.status_code in (200, 202), first.get_json()
    assert send().status_code == 200  # a replay, while the password is live
    _revoke(app, billing)

    body = assert_unauthorized(send())

    assert "id" not in body and "status" not in body and "results" not in body
    assert len(billing.queued()) == 1


def test_a_revoked_cached_app_password_cannot_read_an_event(billing, app):
    accepted = billing.post()
    assert billing.get(accepted.get_json()["id"]).status_code == 200
    _revoke(app, billing)

    assert_unauthorized(billing.get(accepted.get_json()["id"]))


def test_a_jwt_caller_who_loses_superadmin_is_refused_once_the_cache_expires(billing, app, settings):
    app.extensions["caller_cache"].ttl_seconds = 0  # what AUTH_CACHE_SECONDS bounds
    assert billing.post(token=billing.jwt).status_code == 202
    with db.transaction(settings.database_url) as session:
        session.execute(sa.text("DELETE FROM membership_roles"))

    assert billing.post(token=billing.jwt).status_code == 403


def test_a_cached_credential_is_never_trusted_past_its_own_expiry():
    import time
    import uuid

    from ingest_api.auth import Caller, CallerCache

    cache = CallerCache(ttl_seconds=60)
    caller = Caller(uuid.uuid4(), None)
    cache.put("expired.jwt", caller, expires_at=time.time() - 1)
    cache.put("valid.jwt", caller, expires_at=time.time() + 30)

    assert cache.get("expired.jwt") is None
    assert cache.get("valid.jwt") == caller
