"""The review queue: propose (admin, API with a token), review with conflicts, rights by role."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.gis.geos import Point
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from places.models import Dataset, Place, PlaceChange, PlaceProposal
from places.services import place_create, place_update
from places.services.access import dataset_role_grant
from places.services.review import (
    ProposalConflict,
    ProposalError,
    proposal_approve,
    proposal_conflicts,
    proposal_create,
    proposal_reject,
)
from places.services.tokens import api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def own() -> Dataset:
    return Dataset.objects.create(name="Own", slug="own-r")


@pytest.fixture
def other() -> Dataset:
    return Dataset.objects.create(name="Other", slug="other-r")


@pytest.fixture
def place(own) -> Place:
    return place_create(
        dataset=own,
        source_key="r1",
        data={"name": "St Mary", "religion": "unknown", "location": Point(1, 1, srid=4326)},
    )


def _user(name: str, role: str | None, dataset: Dataset | None) -> User:
    user = User.objects.create_user(name, password="pw")
    if role == "admin":
        user.is_staff = True
        user.save()
        user.groups.add(Group.objects.get(name="admin"))
    elif role is not None and dataset is not None:
        dataset_role_grant(user=user, dataset=dataset, role=role)
    return User.objects.get(pk=user.pk)


def test_a_proposal_waits_and_its_approval_is_one_logged_change_by_the_reviewer(own, place):
    # given a contributor's proposal and a reviewer of the dataset
    contributor = _user("carla", "contributor", own)
    reviewer = _user("rita", "reviewer", own)
    proposal = proposal_create(
        place=place,
        user=contributor,
        values={"name": "St Mary the Virgin", "religion": "christian"},
        comment="board at the door",
    )
    # then the place is unchanged while the proposal waits, based on its version
    place.refresh_from_db()
    assert (place.name, place.version) == ("St Mary", 1)
    assert proposal.base_version == 1
    assert proposal.base_values == {"name": "St Mary", "religion": "unknown"}
    # when the reviewer approves it
    proposal_approve(proposal=proposal, user=reviewer, comment="checked")
    # then both values are applied in one change, the reviewer its user, naming the proposer
    place.refresh_from_db()
    proposal.refresh_from_db()
    assert (place.name, place.religion, place.version) == ("St Mary the Virgin", "christian", 2)
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert set(change.changes) == {"name", "religion"}
    assert change.user == reviewer
    assert change.comment == f"Proposal #{proposal.pk} by carla, approved by rita: checked"
    assert (proposal.status, proposal.reviewer, proposal.applied_change) == (
        "approved",
        reviewer,
        change,
    )
    # and it cannot be decided again
    with pytest.raises(ProposalError):
        proposal_reject(proposal=proposal, user=reviewer, comment="no")


def test_a_field_changed_since_the_proposal_is_a_conflict_shown_and_refused_unless_forced(
    own, place
):
    # given a proposal of a name and a religion, then a curator's edit of the name
    proposal = proposal_create(
        place=place,
        user=_user("carla", "contributor", own),
        values={"name": "St Mary the Virgin", "religion": "christian"},
    )
    place_update(place=place, data={"name": "Saint Mary"}, user=_user("cur", "curator", own))
    reviewer = _user("rita", "reviewer", own)
    # when the reviewer approves
    with pytest.raises(ProposalConflict) as refused:
        proposal_approve(proposal=proposal, user=reviewer)
    # then the conflict names the field with its value then, now and proposed
    [conflict] = refused.value.conflicts
    assert (conflict.field, conflict.base, conflict.current, conflict.proposed) == (
        "name",
        "St Mary",
        "Saint Mary",
        "St Mary the Virgin",
    )
    # and nothing was applied
    place.refresh_from_db()
    assert (place.name, place.religion) == ("Saint Mary", "unknown")
    assert PlaceProposal.objects.get(pk=proposal.pk).status == "pending"
    # when approved with the overwrite confirmed, then both fields are applied
    proposal_approve(proposal=proposal, user=reviewer, force=True)
    place.refresh_from_db()
    assert (place.name, place.religion) == ("St Mary the Virgin", "christian")


def test_changes_to_other_fields_or_to_the_proposed_value_are_no_conflict(own, place):
    # given a proposal of a name, then edits of another field and of the name to that value
    proposal = proposal_create(
        place=place, user=_user("carla", "contributor", own), values={"name": "St Mary's"}
    )
    curator = _user("cur", "curator", own)
    place_update(place=place, data={"religion": "christian"}, user=curator)
    assert proposal_conflicts(proposal=proposal) == []
    place_update(place=place, data={"name": "St Mary's"}, user=curator)
    # then there is no conflict, and approving changes nothing more
    assert proposal_conflicts(proposal=proposal) == []
    approved = proposal_approve(proposal=proposal, user=_user("rita", "reviewer", own))
    assert approved.status == "approved"
    assert approved.applied_change is None


def test_a_rejection_needs_a_comment_and_leaves_the_place_as_it_was(own, place):
    proposal = proposal_create(
        place=place, user=_user("carla", "contributor", own), values={"name": "X"}
    )
    reviewer = _user("rita", "reviewer", own)
    with pytest.raises(ValidationError):
        proposal_reject(proposal=proposal, user=reviewer, comment=" ")
    proposal_reject(proposal=proposal, user=reviewer, comment="no such name on the board")
    proposal.refresh_from_db()
    place.refresh_from_db()
    assert (proposal.status, proposal.review_comment) == ("rejected", "no such name on the board")
    assert place.name == "St Mary"


@pytest.mark.parametrize(
    ("role", "where", "may_propose", "may_review"),
    [
        ("contributor", "own", True, False),
        ("curator", "own", True, False),
        ("reviewer", "own", False, True),
        ("viewer", "own", False, False),
        ("importer", "own", False, False),
        ("admin", None, True, True),
        ("contributor", "other", False, False),
        ("reviewer", "other", False, False),
    ],
)
def test_rights_to_propose_and_review_are_per_role_and_dataset(
    own, other, place, role, where, may_propose, may_review
):
    # given a user with a role in the place's dataset or in another one
    user = _user("someone", role, own if where == "own" else other)
    proposal = proposal_create(
        place=place, user=_user("carla", "contributor", own), values={"name": "New"}
    )
    # when they propose and approve, then they may as the role says
    if may_propose:
        proposal_create(place=place, user=user, values={"name": "Other"})
    else:
        with pytest.raises(PermissionDenied):
            proposal_create(place=place, user=user, values={"name": "Other"})
    if may_review:
        assert proposal_approve(proposal=proposal, user=user).status == "approved"
    else:
        with pytest.raises(PermissionDenied):
            proposal_approve(proposal=proposal, user=user)


def test_nobody_reviews_their_own_proposal(own, place):
    admin = _user("boss", "admin", None)
    proposal = proposal_create(place=place, user=admin, values={"name": "Mine"})
    with pytest.raises(ProposalError):
        proposal_approve(proposal=proposal, user=admin)


def test_bad_values_are_refused_naming_the_field(own, place):
    contributor = _user("carla", "contributor", own)
    for values, field in (
        ({"religion": "druid"}, "religion"),
        ({"start_date": "2020-13-40"}, "start_date"),
        ({"location": {"type": "Point"}}, "location"),
        ({"status": "retired"}, "status"),
        ({"name": "St Mary"}, "values"),  # the value it already has
    ):
        with pytest.raises(ValidationError) as refused:
            proposal_create(place=place, user=contributor, values=values)
        assert field in refused.value.message_dict, values


def _api(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_the_api_takes_proposals_with_a_token_and_lists_only_ones_own(own, other, place):
    # given a contributor's token (made by the command) and another contributor's proposal
    contributor = _user("carla", "contributor", own)
    out = io.StringIO()
    call_command("api_token_create", "carla", "--name", "phone", stdout=out)
    key = out.getvalue().strip()
    proposal_create(place=place, user=_user("dan", "contributor", own), values={"name": "Dan's"})
    client = _api(key)
    url = reverse("proposal-list")
    # when she proposes a new location and a date
    response = client.post(
        url,
        {
            "place": place.pk,
            "values": {
                "location": {"type": "Point", "coordinates": [1.5, 1.25]},
                "start_date": "1850-01-01",
            },
            "comment": "GPS at the door",
        },
        format="json",
    )
    # then it is stored pending, in the log's form
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["values"]["location"] == {"type": "Point", "coordinates": [1.5, 1.25]}
    assert body["proposer"] == "carla"
    # and her list shows only her own proposal, and its fate once decided
    listed = client.get(url).json()["results"]
    assert [p["id"] for p in listed] == [body["id"]]
    proposal_reject(
        proposal=PlaceProposal.objects.get(pk=body["id"]),
        user=_user("rita", "reviewer", own),
        comment="off by a street",
    )
    detail = client.get(reverse("proposal-detail", args=[body["id"]])).json()
    assert (detail["status"], detail["reviewer"], detail["review_comment"]) == (
        "rejected",
        "rita",
        "off by a street",
    )
    assert client.get(url, {"status": "approved"}).json()["results"] == []
    # and bad input is a 400 naming the field, another dataset's place a 403
    bad = client.post(url, {"place": place.pk, "values": {"religion": "druid"}}, format="json")
    assert bad.status_code == 400
    assert "religion" in bad.json()
    assert client.get(url, {"status": "maybe"}).status_code == 400
    elsewhere = place_create(
        dataset=other, source_key="o1", data={"name": "O", "location": Point(2, 2)}
    )
    denied = client.post(url, {"place": elsewhere.pk, "values": {"name": "P"}}, format="json")
    assert denied.status_code == 403
    # and a wrong or revoked token is a 401
    assert _api("plc_wrong").get(url).status_code == 401
    token, revoked_key = api_token_create(user=contributor)
    api_token_revoke(token=token)
    assert _api(revoked_key).get(url).status_code == 401
    assert APIClient().get(url).status_code == 401


def test_the_admin_proposes_and_the_reviewer_sees_the_diff_on_maps_and_approves(client, own, place):
    # given a contributor on the place's page
    contributor = _user("carla", "contributor", own)
    client.force_login(contributor)
    page = client.get(reverse("admin:places_place_change", args=[place.pk])).content.decode()
    propose_url = reverse("admin:places_placeproposal_propose", args=[place.pk])
    assert propose_url in page
    # when she sends a new name and location for review
    form = client.get(propose_url)
    assert form.status_code == 200
    response = client.post(
        propose_url,
        {
            "name": "St Mary the Virgin",
            "religion": "unknown",
            # As the map widget posts it, in its own projection unless an SRID says otherwise.
            "location": "SRID=4326;POINT (1.2 1.1)",
            "denominations": "",
            "tags": "{}",
            "comment": "moved",
        },
    )
    proposal = PlaceProposal.objects.get(place=place)
    assert response.status_code == 302
    assert set(proposal.values) == {"name", "location"}
    # then a reviewer sees it against the current record, with both locations on maps
    reviewer = _user("rita", "reviewer", own)
    client.force_login(reviewer)
    review_url = reverse("admin:places_placeproposal_review", args=[proposal.pk])
    page = client.get(review_url).content.decode()
    assert "St Mary the Virgin" in page
    assert "Location now" in page
    assert "Location proposed" in page
    assert "(conflict)" not in page
    # and after a curator renamed the place meanwhile, the name is marked as a conflict
    place_update(place=place, data={"name": "Saint Mary"}, user=_user("cur", "curator", own))
    page = client.get(review_url).content.decode()
    assert "name (conflict)" in page
    # when approved without confirming, nothing is applied; with it, the proposal is applied
    refused = client.post(review_url, {"approve": "1", "comment": ""}).content.decode()
    assert "was not applied" in refused
    client.post(review_url, {"approve": "1", "comment": "ok", "force": "on"})
    place.refresh_from_db()
    assert place.name == "St Mary the Virgin"
    assert (place.location.x, place.location.y) == (1.2, 1.1)
    # and the proposer finds its fate in her list
    client.force_login(contributor)
    mine = client.get(reverse("admin:places_placeproposal_changelist"), {"whose": "mine"})
    assert "Approved" in mine.content.decode()
