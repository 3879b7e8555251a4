"""The edge admin: status at a glance, a key shown once, revoke, sensors' latest readings,
batches' errors, and nothing for staff without the permissions."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_permission_codename
from django.contrib.auth.models import Permission, User
from django.db.models import Model
from django.urls import reverse

from ingestion.edge.models import EdgeNode, EdgeNodeKey, NodeStatus, ObservationBatch, Sensor
from ingestion.edge.services.keys import EdgeAuthError, edge_key_authenticate, edge_key_create
from tests.ingestion.edge.factories import declare, ingest, node_make, reading

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2019, 3, 1, 7, 0, tzinfo=dt.UTC)
KEY = re.compile(r'<code class="edge-key">(edge_[a-z0-9]{8}_[A-Za-z0-9_-]{43})</code>')


def _staff(username: str, perms: list[tuple[type[Model], str]]) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for model, perm in perms:
        opts = model._meta
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label=opts.app_label,
                codename=get_permission_codename(perm, opts),
            )
        )
    return User.objects.get(pk=user.pk)


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("edge-admin", password="pw"))
    return client


def test_node_list_shows_status_and_last_contact(admin_client):
    # given a silent node
    node = node_make("glance-node")
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.SILENT)

    # when
    response = admin_client.get(
        reverse("admin:ingestion_edgenode_changelist"), {"status": "silent"}
    )

    # then
    assert response.status_code == 200
    content = response.content.decode()
    assert "glance-node" in content
    assert "Silent" in content
    assert "Last seen at" in content


def test_create_key_action_shows_the_key_once_and_it_works(admin_client):
    # given
    node = node_make("key-node")

    # when the action runs
    response = admin_client.post(
        reverse("admin:ingestion_edgenode_changelist"),
        {"action": "create_key", ACTION_CHECKBOX_NAME: [node.pk], "index": 0},
    )

    # then the page shows the key, which authenticates as the node and is not stored
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = KEY.search(response.content.decode())[1]
    assert edge_key_authenticate(raw=secret, scope="push_readings").node == node
    key = EdgeNodeKey.objects.get(node=node)
    assert key.created_by.username == "edge-admin"
    # and it is nowhere to be seen afterwards
    page = admin_client.get(reverse("admin:ingestion_edgenodekey_change", args=[key.pk]))
    assert secret not in page.content.decode()
    node_page = admin_client.get(reverse("admin:ingestion_edgenode_change", args=[node.pk]))
    assert node_page.status_code == 200
    assert key.prefix in node_page.content.decode()
    assert secret not in node_page.content.decode()


def test_revoke_action_revokes_the_selected_keys(admin_client):
    created = edge_key_create(node=node_make())

    response = admin_client.post(
        reverse("admin:ingestion_edgenodekey_changelist"),
        {"action": "revoke", ACTION_CHECKBOX_NAME: [created.key.pk], "index": 0},
        follow=True,
    )

    assert "1 key(s) revoked" in response.content.decode()
    with pytest.raises(EdgeAuthError, match="revoked"):
        edge_key_authenticate(raw=created.secret, scope="push_readings")


def test_keys_cannot_be_typed_into_an_add_form(admin_client):
    response = admin_client.get(reverse("admin:ingestion_edgenodekey_add"))

    assert response.status_code == 403


def test_sensor_page_shows_the_latest_value_of_each_parameter(admin_client):
    # given a sensor with two parameters, several readings each
    node = node_make()
    ingest(
        node,
        [
            reading(0, "adm-1", T0, value=10),
            reading(1, "adm-1", T0 + dt.timedelta(minutes=5), value=11.5),
            reading(2, "adm-1", T0, value=4.25, parameter="temperature"),
        ],
        sensors=[declare("adm-1")],
    )
    sensor = Sensor.objects.get(external_id="adm-1")

    # when
    response = admin_client.get(reverse("admin:ingestion_sensor_change", args=[sensor.pk]))

    # then
    content = response.content.decode()
    assert "<td>pm10</td><td>11.5 µg/m³</td><td>2019-03-01 07:05:00 UTC</td>" in content
    node_page = admin_client.get(reverse("admin:ingestion_edgenode_change", args=[node.pk]))
    assert "adm-1" in node_page.content.decode()
    assert "<td>temperature</td><td>4.25 °C</td>" in content
    assert "<td>10 µg/m³</td>" not in content


def test_batch_page_lists_its_errors_and_is_read_only(admin_client):
    node = node_make()
    outcome = ingest(node, [reading(0, "adm-2", T0, value=-5)], sensors=[declare("adm-2")])
    batch = ObservationBatch.objects.get(pk=outcome.response["batch"])

    page = admin_client.get(reverse("admin:ingestion_observationbatch_change", args=[batch.pk]))

    content = page.content.decode()
    assert "out_of_range" in content
    assert "pm10 must be between 0 and 2000" in content
    assert 'name="_save"' not in content


@pytest.mark.parametrize(
    "url",
    [
        "admin:ingestion_edgenode_changelist",
        "admin:ingestion_edgenodekey_changelist",
        "admin:ingestion_sensor_changelist",
        "admin:ingestion_observationbatch_changelist",
    ],
)
def test_staff_without_permissions_see_nothing(client, url):
    client.force_login(_staff(f"curator-{url}", []))

    assert client.get(reverse(url)).status_code == 403
    index = client.get(reverse("admin:index")).content.decode()
    assert "Edge node" not in index


def test_staff_who_may_only_view_nodes_cannot_create_keys(client):
    # given a staff user who may view nodes and a node
    node = node_make()
    client.force_login(_staff("node-viewer", [(EdgeNode, "view")]))
    url = reverse("admin:ingestion_edgenode_changelist")
    assert b"create_key" not in client.get(url).content

    # when they post the action anyway
    client.post(url, {"action": "create_key", ACTION_CHECKBOX_NAME: [node.pk], "index": 0})

    # then no key is made
    assert not EdgeNodeKey.objects.filter(node=node).exists()


def test_changing_nodes_without_the_key_permission_makes_no_key(client):
    node = node_make()
    client.force_login(_staff("node-changer", [(EdgeNode, "view"), (EdgeNode, "change")]))

    response = client.post(
        reverse("admin:ingestion_edgenode_changelist"),
        {"action": "create_key", ACTION_CHECKBOX_NAME: [node.pk], "index": 0},
        follow=True,
    )

    assert "You may not create edge node keys." in response.content.decode()
    assert not EdgeNodeKey.objects.filter(node=node).exists()


def test_a_sensors_node_cannot_be_changed_once_it_exists(admin_client):
    # given a sensor of one node, and another node
    node, other = node_make(), node_make()
    ingest(node, [reading(0, "adm-9", T0)], sensors=[declare("adm-9")])
    sensor = Sensor.objects.get(external_id="adm-9")
    url = reverse("admin:ingestion_sensor_change", args=[sensor.pk])

    # when staff open its page and post the form naming the other node
    page = admin_client.get(url).content.decode()
    response = admin_client.post(
        url, {"external_id": "adm-9", "node": other.pk, "kind": "SDS011", "location": ""}
    )

    # then the node is shown, not offered, and stays the sensor's
    assert 'name="node"' not in page
    assert node.name in page
    assert response.status_code == 302
    assert Sensor.objects.get(pk=sensor.pk).node == node


def test_a_new_sensor_is_given_its_node_in_the_add_form(admin_client):
    page = admin_client.get(reverse("admin:ingestion_sensor_add")).content.decode()
    assert 'name="node"' in page
