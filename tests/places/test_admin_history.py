"""The places admin as a curator uses it (a superuser through the test client): one history
per place, revert and restore behind confirmation pages, retire with a reason and its undo,
the changelist filters, the audit view, and the place form's typed coordinates."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.gis.geos import Point
from django.urls import reverse

from places.models import Place, PlaceChange, Region
from places.services import dataset_get_or_create, place_create, place_retire, place_update

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:places_place_changelist"


@pytest.fixture
def place(admin_user) -> Place:
    dataset = dataset_get_or_create(slug="admin-history")
    return place_create(
        dataset=dataset,
        source_key="a1",
        data={"name": "St Anne", "religion": "christian", "location": Point(-1, 52)},
        user=admin_user,
    )


def _at(place: Place, version: int) -> PlaceChange:
    return PlaceChange.objects.get(place=place, place_version=version)


def _history(place: Place) -> str:
    return reverse("admin:places_place_history", args=[place.pk])


def test_history_button_and_change_page_show_old_new_and_author_newest_first(
    admin_client, admin_user, place
):
    # given a curator's rename and a system retirement with a reason
    place_update(place=place, data={"name": "St Anne's"}, user=admin_user)
    place_retire(place=place, comment="closed in 2020")
    # when Django's History button is followed
    page = admin_client.get(_history(place)).content.decode()
    # then it lists the change log: old → new per field, the author, newest first
    assert "St Anne → St Anne&#x27;s" in page
    assert f"curator {admin_user.username}" in page
    assert "closed in 2020" in page
    assert page.index("Retire") < page.index("St Anne → St Anne&#x27;s")
    assert "active → retired" in page
    # and the place page shows the same table
    change_page = admin_client.get(reverse("admin:places_place_change", args=[place.pk]))
    assert "St Anne → St Anne&#x27;s" in change_page.content.decode()
    assert "active → retired" in change_page.content.decode()


def test_history_of_a_place_with_a_thousand_changes_is_paged(
    admin_client, place, django_assert_max_num_queries
):
    # given a place with 1,000 logged changes after its creation
    PlaceChange.objects.bulk_create(
        PlaceChange(
            place=place,
            dataset_id=place.dataset_id,
            operation="update",
            changes={"name": {"old": f"n{v - 1}", "new": f"n{v}"}},
            place_version=v,
            source="system",
        )
        for v in range(2, 1002)
    )
    Place.objects.filter(pk=place.pk).update(version=1001)
    # when the history opens, then one page of 50 is read, in a bounded number of queries
    with django_assert_max_num_queries(15):
        response = admin_client.get(_history(place))
    page = response.content.decode()
    assert len(response.context["rows"]) == 50
    assert "Page 1 of 21 (1001 changes)" in page
    assert "n999 → n1000" in page
    assert "n949 → n950" not in page
    # and the last page holds the creation
    last = admin_client.get(_history(place), {"p": 21})
    assert [row.change.place_version for row in last.context["rows"]] == [1]


def test_revert_asks_first_then_reverts_and_logs_the_curator(admin_client, admin_user, place):
    place_update(place=place, data={"name": "Wrong"})
    url = reverse("admin:places_place_revert", args=[place.pk, _at(place, 2).seq])
    # when the revert button is followed, a confirmation comes first and nothing changes
    confirm = admin_client.get(url).content.decode()
    assert "back from Wrong to St Anne" in confirm
    place.refresh_from_db()
    assert place.name == "Wrong"
    # when it is confirmed
    response = admin_client.post(url, {"comment": "vandalism"})
    # then the name is back, logged as a revert by the curator with the comment
    assert response.status_code == 302
    place.refresh_from_db()
    assert place.name == "St Anne"
    revert = PlaceChange.objects.filter(place=place).latest("seq")
    assert (revert.operation, revert.user, revert.comment) == ("revert", admin_user, "vandalism")
    assert revert.reverts == _at(place, 2)
    # and the history says which change reverted which
    page = admin_client.get(_history(place)).content.decode()
    assert f"reverted by #{revert.seq}" in page


def test_revert_touching_later_changes_is_refused_with_the_fields_unless_forced(
    admin_client, place
):
    # given two renames
    place_update(place=place, data={"name": "First"})
    place_update(place=place, data={"name": "Second"})
    first, second = _at(place, 2), _at(place, 3)
    url = reverse("admin:places_place_revert", args=[place.pk, first.seq])
    # then the confirmation already warns about the later change
    assert f"(by change #{second.seq})" in admin_client.get(url).content.decode()
    # when the revert is posted without "revert anyway"
    refused = admin_client.post(url, {})
    # then it is refused with a message naming the field and the change; nothing is written
    assert refused.status_code == 200
    assert f"name (by change #{second.seq})" in refused.content.decode()
    place.refresh_from_db()
    assert (place.name, place.version) == ("Second", 3)
    # when it is forced, the old value is written back over the later change
    forced = admin_client.post(url, {"force": "on"})
    assert forced.status_code == 302
    place.refresh_from_db()
    assert place.name == "St Anne"


def test_restore_asks_first_then_brings_back_the_version(admin_client, admin_user, place):
    place_update(place=place, data={"name": "Second"})
    place_update(place=place, data={"religion": "other", "name": "Third"})
    url = reverse("admin:places_place_restore", args=[place.pk, 1])
    confirm = admin_client.get(url).content.decode()
    assert f"#{_at(place, 3).seq}: name, religion" in confirm
    response = admin_client.post(url, {})
    assert response.status_code == 302
    place.refresh_from_db()
    assert (place.name, place.religion) == ("St Anne", "christian")
    restore = PlaceChange.objects.filter(place=place).latest("seq")
    assert (restore.operation, restore.user) == ("restore", admin_user)
    assert restore.reverts == _at(place, 1)


def _action(client, action: str, pks: list[int], query: str = "", **extra: str):
    return client.post(
        reverse(CHANGELIST) + query,
        {"action": action, ACTION_CHECKBOX_NAME: pks, "index": 0, **extra},
    )


def test_retire_action_confirms_and_requires_a_reason(admin_client, admin_user, place):
    other = place_create(
        dataset=place.dataset, source_key="a2", data={"name": "Chapel", "location": Point(-1, 53)}
    )
    pks = [place.pk, other.pk]
    # when the action is chosen, a confirmation page counts the places and nothing changes
    asked = _action(admin_client, "retire_selected", pks)
    assert asked.status_code == 200
    assert "Retire <strong>2</strong> active places?" in asked.content.decode()
    assert not Place.objects.filter(pk__in=pks, status="retired").exists()
    # when it is confirmed without a reason, it is asked again
    no_reason = _action(admin_client, "retire_selected", pks, confirm="yes", reason="")
    assert no_reason.status_code == 200
    assert "This field is required" in no_reason.content.decode()
    assert not Place.objects.filter(pk__in=pks, status="retired").exists()
    # when confirmed with a reason, both are retired and the reason is logged with each
    done = _action(admin_client, "retire_selected", pks, confirm="yes", reason="demolished")
    assert done.status_code == 302
    assert Place.objects.filter(pk__in=pks, status="retired").count() == 2
    logged = PlaceChange.objects.filter(place_id__in=pks, operation="retire")
    assert {(c.comment, c.user) for c in logged} == {("demolished", admin_user)}


def test_retire_with_select_all_counts_the_whole_filtered_list(admin_client, place):
    for i in range(3):
        place_create(
            dataset=place.dataset, source_key=f"b{i}", data={"location": Point(-1, 52 + i)}
        )
    query = f"?dataset__id__exact={place.dataset_id}"
    # when "select all" of the filtered list is chosen with one place ticked
    asked = _action(admin_client, "retire_selected", [place.pk], query, select_across="1")
    # then the confirmation counts all four places of the dataset
    assert "Retire <strong>4</strong> active places?" in asked.content.decode()
    done = _action(
        admin_client,
        "retire_selected",
        [place.pk],
        query,
        select_across="1",
        confirm="yes",
        reason="dataset withdrawn",
    )
    assert done.status_code == 302
    assert not Place.objects.filter(dataset=place.dataset, status="active").exists()


def test_undo_retirement_action_makes_places_active_again(admin_client, admin_user, place):
    place_retire(place=place, user=admin_user, comment="by mistake")
    response = _action(admin_client, "unretire_selected", [place.pk])
    assert response.status_code == 302
    place.refresh_from_db()
    assert (place.status, place.end_date) == ("active", None)
    undo = PlaceChange.objects.filter(place=place).latest("seq")
    assert (undo.operation, undo.reverts, undo.user) == ("revert", _at(place, 2), admin_user)


def test_place_filters_region_country_no_name_and_recently_changed(admin_client, sample_regions):
    dataset = dataset_get_or_create(slug="admin-filters")
    london = place_create(
        dataset=dataset, source_key="l", data={"name": "", "location": Point(-0.1265, 51.5088)}
    )
    manchester = place_create(
        dataset=dataset, source_key="m", data={"name": "M", "location": Point(-2.2426, 53.4808)}
    )
    paris = place_create(
        dataset=dataset, source_key="p", data={"name": "P", "location": Point(2.35, 48.85)}
    )
    Place.objects.filter(pk=paris.pk).update(updated_at="2001-01-01T00:00:00Z")
    base = {"dataset__id__exact": dataset.pk}

    def listed(**params) -> set[int]:
        response = admin_client.get(reverse(CHANGELIST), {**base, **params})
        assert response.status_code == 200
        return {p.pk for p in response.context["cl"].result_list}

    gb = Region.objects.get(level="country", code="GBR")
    assert listed(country=gb.pk) == {london.pk, manchester.pk}
    assert listed(region=london.region_id) == {london.pk}
    assert listed(named="no") == {london.pk}
    assert listed(named="yes") == {manchester.pk, paris.pk}
    assert listed(changed="1d") == {london.pk, manchester.pk}
    # the region filter offers the chosen country's regions
    page = admin_client.get(reverse(CHANGELIST), {**base, "country": gb.pk}).content.decode()
    assert "Westminster" in page


def test_audit_view_filters_by_author_dataset_field_operation_and_time(
    admin_client, admin_user, place
):
    place_update(place=place, data={"name": "By curator"}, user=admin_user)
    place_update(place=place, data={"religion": "other"}, device_id="edge-9")
    url = reverse("admin:places_placechange_changelist")
    base = {"dataset__id__exact": place.dataset_id}

    def listed(**params) -> list[int]:
        response = admin_client.get(url, {**base, **params})
        assert response.status_code == 200
        return sorted(c.place_version for c in response.context["cl"].result_list)

    assert listed() == [1, 2, 3]
    assert listed(user=admin_user.pk) == [1, 2]
    assert listed(source__exact="device") == [3]
    assert listed(field="name") == [1, 2]
    assert listed(operation__exact="update") == [2, 3]
    assert listed(when="1h") == [1, 2, 3]
    assert listed(device_id="edge-9") == [3]
    page = admin_client.get(url, {**base, "field": "name"}).content.decode()
    assert "name: St Anne → By curator" in page
    assert f"curator {admin_user.username}" in page


def test_place_form_has_a_one_line_name_and_typed_coordinates(admin_client, sample_regions):
    dataset = dataset_get_or_create(slug="admin-typed")
    place = place_create(
        dataset=dataset, source_key="t", data={"name": "T", "location": Point(-0.1265, 51.5088)}
    )
    url = reverse("admin:places_place_change", args=[place.pk])
    response = admin_client.get(url)
    html = response.content.decode()
    assert '<input type="text" name="name"' in html
    assert "<textarea" not in html[html.index('name="name"') - 200 : html.index('name="name"')]
    form = response.context["adminform"].form
    assert (form["longitude"].value(), form["latitude"].value()) == (-0.1265, 51.5088)
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "location": place.location.transform(3857, clone=True).json,
            "footprint": "",
            "tags": json.dumps(place.tags),
            "denominations": "",
            "country": place.country_id,
            "region": place.region_id,
            "merged_into": "",
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
            # typed: Manchester
            "longitude": "-2.2426",
            "latitude": "53.4808",
        }
    )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    place.refresh_from_db()
    assert (place.location.x, place.location.y) == (-2.2426, 53.4808)
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert change.changes["location"]["new"]["coordinates"] == [-2.2426, 53.4808]
    assert place.region.name == "Manchester"


def test_typed_coordinates_out_of_range_are_refused_naming_the_field(admin_client, place):
    url = reverse("admin:places_place_change", args=[place.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "location": place.location.transform(3857, clone=True).json,
            "footprint": "",
            "tags": "{}",
            "denominations": "",
            "country": "",
            "region": "",
            "merged_into": "",
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
            "longitude": "-1",
            "latitude": "95",
        }
    )
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "latitude" in response.context["adminform"].form.errors
    place.refresh_from_db()
    assert place.location.y == 52


def test_revert_and_restore_need_the_revert_right_in_the_places_dataset(client, place):
    from django.contrib.auth.models import User

    from places.services.access import dataset_role_grant

    # given a rename, and a user who is curator of another dataset only
    place_update(place=place, data={"name": "Wrong"})
    user = User.objects.create_user("hist-curator", password="pw")
    dataset_role_grant(user=user, dataset=dataset_get_or_create(slug="elsewhere"), role="curator")
    client.force_login(user)
    revert = reverse("admin:places_place_revert", args=[place.pk, _at(place, 2).seq])
    restore = reverse("admin:places_place_restore", args=[place.pk, 1])
    # then the place does not exist for them
    assert client.get(revert).status_code == 404
    # as a viewer of the place's dataset they see its history but may not go back on it
    dataset_role_grant(user=user, dataset=place.dataset, role="viewer")
    user = User.objects.get(pk=user.pk)
    client.force_login(user)
    assert client.get(_history(place)).status_code == 200
    assert client.get(revert).status_code == 403
    assert client.post(restore, {}).status_code == 403
    place.refresh_from_db()
    assert place.name == "Wrong"
    # as its curator they may
    dataset_role_grant(user=user, dataset=place.dataset, role="curator")
    client.force_login(User.objects.get(pk=user.pk))
    assert client.post(revert, {}).status_code == 302
    place.refresh_from_db()
    assert place.name == "St Anne"


def test_history_filters_by_field_and_author(admin_client, admin_user, place):
    place_update(place=place, data={"name": "Curated"}, user=admin_user)
    place_update(place=place, data={"religion": "other"}, device_id="edge-3")

    def versions(**params) -> list[int]:
        response = admin_client.get(_history(place), params)
        return [row.change.place_version for row in response.context["rows"]]

    assert versions() == [3, 2, 1]
    assert versions(field="religion") == [3, 1]
    assert versions(source="device") == [3]
    assert versions(field="name", source="user") == [2, 1]
    # an unknown field is no filter rather than an error
    assert versions(field="nonsense") == [3, 2, 1]


def test_a_place_can_be_added_with_typed_coordinates_only(admin_client, sample_regions):
    dataset = dataset_get_or_create(slug="admin-typed-add")
    data = {
        "name": "Typed chapel",
        "dataset": dataset.pk,
        "source_key": "curator:typed",
        "status": "active",
        "religion": "christian",
        "religion_raw": "",
        "denominations": "",
        "denomination_raw": "",
        "location": "",
        "longitude": "-0.1265",
        "latitude": "51.5088",
        "footprint": "",
        "tags": "{}",
        "start_date_raw": "",
        "end_date_raw": "",
        "attributes-TOTAL_FORMS": "0",
        "attributes-INITIAL_FORMS": "0",
    }
    response = admin_client.post(reverse("admin:places_place_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    place = Place.objects.get(dataset=dataset, source_key="curator:typed")
    assert (place.location.x, place.location.y) == (-0.1265, 51.5088)
    assert place.region.name == "Westminster"


def test_a_change_page_shows_its_author_and_old_new_per_field(admin_client, admin_user, place):
    place_update(place=place, data={"name": "Renamed"}, user=admin_user)
    url = reverse("admin:places_placechange_change", args=[_at(place, 2).seq])
    page = admin_client.get(url).content.decode()
    assert "<strong>name</strong>: St Anne → Renamed" in page
    assert f"curator {admin_user.username}" in page


def test_audit_view_lists_newest_first_and_caps_filtered_counts(
    admin_client, admin_user, place, monkeypatch
):
    from places import admin_history

    for name in ("Second", "Third", "Fourth"):
        place_update(place=place, data={"name": name}, user=admin_user)
    monkeypatch.setattr(admin_history, "AUDIT_COUNT_CAP", 2)
    response = admin_client.get(
        reverse("admin:places_placechange_changelist"),
        {"dataset__id__exact": place.dataset_id, "field": "name"},
    )
    cl = response.context["cl"]
    # four changes match: the list shows them newest first, and counts no further than the cap
    assert [c.place_version for c in cl.result_list][:4] == [4, 3, 2, 1]
    assert cl.result_count == 2
