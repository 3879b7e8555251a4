"""Node keys: shown once, stored hashed, refused with a reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from django.utils import timezone

from ingestion.edge.models import EdgeNode, EdgeNodeKey, KeyScope, NodeStatus
from ingestion.edge.services.keys import (
    EdgeAuthError,
    EdgeNodeNameTaken,
    edge_key_authenticate,
    edge_key_create,
    edge_key_revoke,
    edge_node_create,
)
from tests.ingestion.edge.factories import node_make, region_make

pytestmark = pytest.mark.django_db

PUSH = KeyScope.PUSH_READINGS.value
PULL = KeyScope.PULL_PLACES.value


def _code(raw: str | None, scope: str = PUSH) -> str:
    with pytest.raises(EdgeAuthError) as refused:
        edge_key_authenticate(raw=raw, scope=scope)
    return refused.value.code


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored():
    # given
    node = node_make()

    # when
    created = edge_key_create(node=node, name="field box")

    # then the text has the documented shape, and the row holds its prefix and hash only
    assert re.fullmatch(r"edge_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", created.secret)
    row = EdgeNodeKey.objects.get(pk=created.key.pk)
    assert created.secret.split("_")[1] == row.prefix
    assert row.key_hash == hashlib.sha256(created.secret.encode()).hexdigest()
    assert created.secret not in str(EdgeNodeKey.objects.filter(pk=row.pk).values().get())
    assert sorted(row.scopes) == sorted([PUSH, PULL])


def test_a_key_authenticates_as_its_node_with_or_without_the_bearer_word():
    node = node_make()
    created = edge_key_create(node=node)

    assert edge_key_authenticate(raw=created.secret, scope=PUSH).node == node
    assert edge_key_authenticate(raw=f"Bearer {created.secret}", scope=PULL).node == node


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "key_missing"),
        ("", "key_missing"),
        ("Bearer ", "key_missing"),
        ("edge_short_x", "key_malformed"),
        ("Basic dXNlcjpwYXNz", "key_malformed"),
        ("edge_abcdefgh_" + "A" * 43, "key_unknown"),
    ],
)
def test_missing_malformed_and_unknown_keys_are_refused(raw, code):
    assert _code(raw) == code


def test_a_wrong_secret_for_a_known_prefix_is_unknown():
    created = edge_key_create(node=node_make())
    wrong = created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B")

    assert _code(wrong) == "key_unknown"


def test_a_revoked_key_is_refused_saying_so():
    created = edge_key_create(node=node_make())

    edge_key_revoke(key=created.key)

    with pytest.raises(EdgeAuthError) as refused:
        edge_key_authenticate(raw=created.secret, scope=PUSH)
    assert refused.value.code == "key_revoked"
    assert "revoked" in refused.value.message


def test_an_expired_key_is_refused_naming_when_it_expired():
    expired = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    created = edge_key_create(node=node_make(), expires_at=expired)

    with pytest.raises(EdgeAuthError) as refused:
        edge_key_authenticate(raw=created.secret, scope=PUSH)

    assert refused.value.code == "key_expired"
    assert refused.value.message == "The key expired at 2026-01-02T03:04:05Z."


def test_a_disabled_nodes_keys_are_refused():
    node = node_make()
    created = edge_key_create(node=node)
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.DISABLED)

    assert _code(created.secret) == "node_disabled"


def test_a_key_without_the_scope_is_refused_naming_the_scope():
    created = edge_key_create(node=node_make(), scopes=[PULL])

    with pytest.raises(EdgeAuthError) as refused:
        edge_key_authenticate(raw=created.secret, scope=PUSH)

    assert refused.value.code == "scope_missing"
    assert PUSH in refused.value.message


def test_any_scope_will_do_when_none_is_named():
    # given a key that may only pull places
    created = edge_key_create(node=node_make(), scopes=[PULL])

    # when it is checked for a request that any key of the node may make (a heartbeat)
    key = edge_key_authenticate(raw=created.secret, scope=None)

    # then it passes as that key
    assert key.pk == created.key.pk


def test_last_use_is_written_at_most_once_a_minute(django_assert_num_queries):
    # given a key used just now
    created = edge_key_create(node=node_make())
    edge_key_authenticate(raw=created.secret, scope=PUSH)
    first = EdgeNodeKey.objects.get(pk=created.key.pk).last_used_at
    assert first is not None

    # when it is used again within the minute: one read, no write
    with django_assert_num_queries(1):
        edge_key_authenticate(raw=created.secret, scope=PUSH)

    # then; and after a minute it is written again
    assert EdgeNodeKey.objects.get(pk=created.key.pk).last_used_at == first
    EdgeNodeKey.objects.filter(pk=created.key.pk).update(
        last_used_at=timezone.now() - dt.timedelta(minutes=2)
    )
    edge_key_authenticate(raw=created.secret, scope=PUSH)
    assert EdgeNodeKey.objects.get(pk=created.key.pk).last_used_at > first


@pytest.mark.parametrize("scopes", [[], ["delete_everything"]])
def test_unknown_or_no_scopes_are_refused(scopes):
    with pytest.raises(ValueError, match="Scopes must be some of"):
        edge_key_create(node=node_make(), scopes=scopes)


def test_a_node_name_is_taken_once():
    region = region_make()
    edge_node_create(name="box-1", region=region)

    with pytest.raises(EdgeNodeNameTaken, match="box-1"):
        edge_node_create(name="box-1", region=region)


def test_any_use_of_a_key_is_contact_from_its_node_and_wakes_a_silent_one():
    # given a pull-only node marked silent a while ago
    node = node_make()
    created = edge_key_create(node=node, scopes=[PULL])
    long_ago = timezone.now() - dt.timedelta(hours=3)
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.SILENT, last_seen_at=long_ago)

    # when it uses its key (to pull places: no heartbeat, no batch)
    edge_key_authenticate(raw=created.secret, scope=PULL)

    # then the node was seen now and is active again
    node.refresh_from_db()
    assert node.status == NodeStatus.ACTIVE
    assert node.last_seen_at is not None
    assert node.last_seen_at > long_ago + dt.timedelta(hours=2)


def test_a_disabled_node_stays_disabled_and_unseen_when_its_key_is_tried():
    node = node_make()
    created = edge_key_create(node=node)
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.DISABLED)

    assert _code(created.secret) == "node_disabled"

    node.refresh_from_db()
    assert (node.status, node.last_seen_at) == (NodeStatus.DISABLED, None)
