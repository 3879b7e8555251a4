"""Every URL and every admin action, tried by every role on its own dataset and another's.

The table below says who may: a URL pattern of the URLconf (the admin's included) or an
admin action with no entry fails the test, and so does an entry for something that is gone.
Roles are granted in the "own" dataset only (the admin role and superusers are global);
"other" is a dataset where nobody but them has a role.

How an answer is read: a URL is allowed when it answers 200 (for a model's change POST: the
form shown again, here with errors, instead of 403), or redirects anywhere but the login page
and the admin's index (where the admin sends an object it will not show). For the
changelists of rows that belong to a dataset, allowed means the row is listed. An admin
action is allowed when it ran: each one is replaced by a spy for the test. Public pages and
the API must answer every role as they answer anonymous users.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group, User
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from analytics.models import RegionSummary
from ingestion.edge.models import (
    EdgeNode,
    EdgeReadingCount,
    ObservationBatch,
    Parameter,
    Sensor,
)
from ingestion.edge.services.keys import edge_key_create
from ingestion.models import ImportJob, ImportRejection, ImportState
from places.models import (
    AreaVersion,
    Dataset,
    DatasetRole,
    DataVersion,
    DuplicateCandidate,
    PlaceAttribute,
    PlaceChange,
    PlaceSource,
    QualityRefresh,
    Region,
    RegionPart,
    SecurityEvent,
)
from places.services import place_create
from places.services.access import dataset_role_grant
from places.services.review import proposal_create
from places.services.tokens import api_token_create

pytestmark = pytest.mark.django_db(databases=["default", "replica"])  # the stats API reads it

ANON, STAFF = "anonymous", "staff-without-roles"
DATASET_ROLES = ("viewer", "contributor", "curator", "reviewer", "importer")
ROLES = (ANON, STAFF, *DATASET_ROLES, "admin", "superuser")
ADMINS = {"admin", "superuser"}
DATASETS = ("own", "other")

Allowed = Callable[[str, str], bool]  # (role, dataset) -> may


def in_ds(*roles: str) -> Allowed:
    """These roles in their own dataset, and the admins everywhere."""
    return lambda role, ds: role in ADMINS or (role in roles and ds == "own")


def anywhere(*roles: str) -> Allowed:
    """Not about one dataset: these roles (whatever their dataset) and the admins."""
    return lambda role, ds: role in ADMINS or role in roles


def only(*roles: str) -> Allowed:
    return lambda role, ds: role in roles


NOBODY = only()
LOGGED_IN = only(*(r for r in ROLES if r != ANON))
EVERYONE = only(*ROLES)
SUPERUSER = only("superuser")
VIEW = DATASET_ROLES  # every dataset role sees its dataset


@dataclass
class Rule:
    allowed: Allowed
    method: str = "get"
    kind: str = "plain"  # plain | listed (changelist row) | public (same answer as anonymous)
    obj: str | None = None  # the object (key of the objects dict) the URL is about
    kwarg: str = "object_id"


@dataclass
class ModelRules:
    """A ModelAdmin's five URLs, its redirect from the bare object URL, and the POST of its
    change form. ``scoped``: its rows belong to a dataset (tried on both)."""

    label: str
    view: Allowed
    change: Allowed
    add: Allowed
    delete: Allowed
    scoped: bool = True
    extra: dict[str, list[Rule]] = field(default_factory=dict)

    def rules(self) -> dict[str, list[Rule]]:
        app, model = self.label.split(".")
        name = f"admin:{app}_{model}"
        obj = self.label
        return {
            f"{name}_changelist": [
                Rule(self.view, kind="listed" if self.scoped else "plain", obj=obj)
            ],
            f"{name}_add": [Rule(self.add)],
            f"{name}_history": [Rule(self.view, obj=obj)],
            f"{name}_delete": [Rule(self.delete, obj=obj)],
            f"{name}_change": [Rule(self.view, obj=obj), Rule(self.change, "post", obj=obj)],
            # The bare object URL only redirects to the change page, which checks.
            f"admin/{app}/{model}/<path:object_id>/": [Rule(LOGGED_IN, obj=obj)],
            **self.extra,
        }


def job_step(name: str, allowed: Allowed, method: str = "post") -> tuple[str, list[Rule]]:
    return (
        f"admin:ingestion_importjob_{name}",
        [Rule(allowed, method, obj="ingestion.importjob", kwarg="job_id")],
    )


MODELS = [
    ModelRules(
        "places.dataset",
        view=in_ds(*VIEW),
        change=in_ds(),
        add=anywhere(),
        delete=in_ds(),
    ),
    ModelRules(
        "places.place",
        view=in_ds(*VIEW),
        change=in_ds("curator"),
        add=anywhere("curator"),
        delete=NOBODY,  # retire instead
        extra={
            "admin:places_place_revert": [
                Rule(in_ds("curator"), obj="places.place.revert", kwarg="")
            ],
            "admin:places_place_restore": [
                Rule(in_ds("curator"), obj="places.place.restore", kwarg="")
            ],
            # Counts of the datasets the user may view.
            "admin:places_place_quality": [Rule(anywhere(*VIEW))],
        },
    ),
    # Likely duplicates: listed to viewers of both places' datasets, decided (merge, "not a
    # duplicate", undo) by curators of both; rows are written by the finder and services.
    ModelRules(
        "places.duplicatecandidate",
        view=in_ds(*VIEW),
        change=NOBODY,
        add=NOBODY,
        delete=NOBODY,
        extra={
            "admin:places_duplicatecandidate_merge": [
                Rule(in_ds("curator"), obj="places.duplicatecandidate", kwarg="candidate_id"),
                Rule(
                    in_ds("curator"), "post", obj="places.duplicatecandidate", kwarg="candidate_id"
                ),
            ],
            "admin:places_duplicatecandidate_undo": [
                Rule(
                    in_ds("curator"), "post", obj="places.duplicatecandidate", kwarg="candidate_id"
                )
            ],
        },
    ),
    ModelRules(
        "places.placeattribute",
        view=in_ds(*VIEW),
        change=in_ds("curator"),
        add=anywhere("curator"),
        delete=in_ds("curator"),
    ),
    # Proposals: their proposer and the dataset's reviewers see them (the matrix's proposer is
    # none of the roles); nobody edits or deletes one; contributors and curators propose.
    ModelRules(
        "places.placeproposal",
        view=in_ds("reviewer"),
        change=NOBODY,
        add=NOBODY,  # proposed from a place's page
        delete=NOBODY,
        extra={
            "admin:places_placeproposal_propose": [
                Rule(in_ds("contributor", "curator"), obj="places.place", kwarg="place_id")
            ],
            "admin:places_placeproposal_review": [
                Rule(in_ds("reviewer"), obj="places.placeproposal", kwarg="pk")
            ],
        },
    ),
    # Users' API tokens (digests only) and the flags' refresh state: the admin role reads them.
    *(
        ModelRules(
            f"places.{name}",
            view=anywhere(),
            change=NOBODY,
            add=NOBODY,
            delete=NOBODY,
            scoped=False,
        )
        for name in ("apitoken", "qualityrefresh")
    ),
    # The change log and data versions: read-only to everyone (the table refuses changes too).
    ModelRules("places.placechange", view=in_ds(*VIEW), change=NOBODY, add=NOBODY, delete=NOBODY),
    ModelRules("places.dataversion", view=anywhere(), change=NOBODY, add=NOBODY, delete=NOBODY),
    ModelRules("places.areaversion", view=anywhere(), change=NOBODY, add=NOBODY, delete=NOBODY),
    # What each place's dataset last delivered: the imports' record, read by the admins only.
    ModelRules("places.placesource", view=anywhere(), change=NOBODY, add=NOBODY, delete=NOBODY),
    ModelRules(
        "ingestion.importjob",
        view=in_ds(*VIEW),
        change=in_ds("importer"),
        add=anywhere("importer"),
        delete=NOBODY,  # a job is the audit of what an import did
        extra=dict(
            [
                job_step("progress", in_ds(*VIEW), "get"),
                job_step("rejections_csv", in_ds(*VIEW), "get"),
                job_step("inspect", in_ds("importer")),
                job_step("dry_run", in_ds("importer")),
                job_step("apply", in_ds("importer")),
                job_step("cancel", in_ds("importer")),
                job_step("resume", in_ds("importer")),
            ]
        ),
    ),
    ModelRules(
        "ingestion.importrejection", view=in_ds(*VIEW), change=NOBODY, add=NOBODY, delete=NOBODY
    ),
    # Regions: every dataset's places are located in them, so only admins change them.
    ModelRules(
        "places.region",
        view=anywhere(*VIEW),
        change=anywhere(),
        add=anywhere(),
        delete=NOBODY,
        scoped=False,
    ),
    ModelRules(
        "places.regionpart", view=anywhere(), change=NOBODY, add=NOBODY, delete=NOBODY, scoped=False
    ),
    # Grants and the security audit trail: the admin role's; the trail is edited by nobody.
    ModelRules(
        "places.datasetrole",
        view=anywhere(),
        change=NOBODY,  # revoke and grant again
        add=anywhere(),
        delete=anywhere(),
        scoped=False,
    ),
    ModelRules(
        "places.securityevent",
        view=anywhere(),
        change=NOBODY,
        add=NOBODY,
        delete=NOBODY,
        scoped=False,
    ),
    # Edge devices: the admin role's (its group holds every permission of ingestion).
    *(
        ModelRules(
            f"ingestion.{name}",
            view=anywhere(),
            change=anywhere(),
            add=anywhere(),
            delete=anywhere(),
            scoped=False,
        )
        for name in ("edgenode", "sensor")
    ),
    ModelRules(
        "ingestion.parameter",
        view=anywhere(),
        change=anywhere(),
        add=anywhere(),
        delete=NOBODY,  # readings refer to parameters by id
        scoped=False,
    ),
    # Rows made by the edge services only.
    ModelRules(
        "ingestion.edgenodekey",
        view=anywhere(),
        change=anywhere(),
        add=NOBODY,
        delete=anywhere(),
        scoped=False,
    ),
    ModelRules(
        "ingestion.observationbatch",
        view=anywhere(),
        change=NOBODY,
        add=NOBODY,
        delete=NOBODY,
        scoped=False,
    ),
    ModelRules(
        "ingestion.edgereadingcount",
        view=anywhere(),
        change=NOBODY,
        add=NOBODY,
        delete=NOBODY,
        scoped=False,
    ),
    # Stored analytics: read-only; no role group holds analytics permissions, so only
    # superusers see them and queue a recompute. The dashboard charts the public statistics
    # API: every staff member opens it.
    ModelRules(
        "analytics.regionsummary",
        view=SUPERUSER,
        change=NOBODY,
        add=NOBODY,
        delete=NOBODY,
        scoped=False,
        extra={
            "admin:analytics_regionsummary_recompute": [Rule(SUPERUSER, "post")],
            "admin:analytics_dashboard": [Rule(LOGGED_IN)],
        },
    ),
    # Users and groups: superusers only (the admin role may look users up, not change them).
    ModelRules(
        "auth.user",
        view=anywhere(),
        change=SUPERUSER,
        add=SUPERUSER,
        delete=SUPERUSER,
        scoped=False,
    ),
    ModelRules(
        "auth.group",
        view=anywhere(),
        change=SUPERUSER,
        add=SUPERUSER,
        delete=SUPERUSER,
        scoped=False,
    ),
]

PUBLIC = [Rule(EVERYONE, kind="public")]

URLS: dict[str, list[Rule]] = {
    # The site, the probes and the read API: the same answer for every role.
    **dict.fromkeys(
        (
            "home",
            "map",
            "place-detail",
            "favicon",
            "health-live",
            "health-ready",
            "prometheus-django-metrics",
            "places:place-list",
            "places:place-detail",
            "places:region-list",
            "places:region-detail",
            "places:dataset-list",
            "places:dataset-detail",
            "viewport",
            "place-tile",
            "region-tile",
            "place-tilejson",
            "region-tilejson",
            "analytics:region-stats",
            "analytics:summary-list",
            "analytics:summary",
            "analytics:region-series",
            "analytics:compare",
            "analytics:rankings",
            "analytics:sensor-series",
            "analytics:place-download",
            "analytics:download-job",
            "analytics:download-file",
            "sensor-latest",
            "schema",
            "api-docs",
            # The OGC API (places.ogc): public reads, like the API it is built on.
            "ogc-landing",
            "ogc-api",
            "ogc-conformance",
            "ogc-collections",
            "ogc-collection",
            "ogc-queryables",
            "ogc-items",
            "ogc-item",
            "ogc-tilesets",
            "ogc-tileset",
            "ogc-tile",
            "ogc-tile-matrix-sets",
            "ogc-tile-matrix-set",
        ),
        PUBLIC,
    ),
    # Proposals through the API: every signed-in user lists their own (here none), and reads
    # only their own (the matrix's proposals are another user's).
    "proposal-list": [Rule(LOGGED_IN)],
    "proposal-detail": [Rule(NOBODY, obj="places.placeproposal", kwarg="pk")],
    # Edge devices authenticate with their keys; a user's session opens nothing there.
    **{name: [Rule(NOBODY)] for name in ("edge:observations", "edge:changes", "edge:heartbeat")},
    # The admin's own pages.
    "admin:index": [Rule(LOGGED_IN)],
    "admin:auth_user_password_change": [Rule(SUPERUSER, obj="auth.user", kwarg="id")],
    "admin:login": [Rule(EVERYONE, kind="answers")],  # the signed-in go on to the index
    "admin:logout": [Rule(NOBODY)],  # GET refused: logging out takes a POST
    "admin:password_change": [Rule(LOGGED_IN)],
    "admin:password_change_done": [Rule(LOGGED_IN)],
    "admin:jsi18n": [Rule(LOGGED_IN)],
    "admin:autocomplete": [Rule(NOBODY)],  # no admin offers autocomplete fields
    "admin:app_list": [Rule(anywhere(*VIEW))],  # tried with places
    # Signed-in users are sent to the object's page on the site; no model of ours has one.
    "admin:view_on_site": [Rule(NOBODY)],
    "admin/(?P<url>.*)$": [Rule(NOBODY)],  # the catch-all: 404 or the login page
    **{k: v for m in MODELS for k, v in m.rules().items()},
}

# Admin actions: (model label, action name) -> who may run it on a row of which dataset.
ACTIONS: dict[tuple[str, str], Allowed] = {
    ("places.place", "retire_selected"): in_ds("curator"),
    ("places.place", "unretire_selected"): in_ds("curator"),
    ("places.place", "delete_selected"): NOBODY,
    ("places.place", "set_religion"): in_ds("curator"),
    ("places.place", "replace_denomination"): in_ds("curator"),
    ("places.place", "export_csv"): in_ds("curator"),
    ("places.place", "export_geojson"): in_ds("curator"),
    ("places.apitoken", "delete_selected"): NOBODY,
    ("places.qualityrefresh", "delete_selected"): NOBODY,
    ("places.placeproposal", "delete_selected"): NOBODY,
    ("places.duplicatecandidate", "mark_not_duplicate"): in_ds("curator"),
    ("places.duplicatecandidate", "delete_selected"): NOBODY,
    ("places.dataset", "sync_now"): in_ds("importer"),
    ("places.dataset", "delete_selected"): in_ds(),
    ("places.placeattribute", "delete_selected"): in_ds("curator"),
    ("places.datasetrole", "delete_selected"): anywhere(),
    ("places.region", "delete_selected"): NOBODY,
    ("places.regionpart", "delete_selected"): NOBODY,
    ("places.placechange", "delete_selected"): NOBODY,
    ("places.dataversion", "delete_selected"): NOBODY,
    ("places.areaversion", "delete_selected"): NOBODY,
    ("places.placesource", "delete_selected"): NOBODY,
    ("places.securityevent", "delete_selected"): NOBODY,
    ("ingestion.importjob", "delete_selected"): NOBODY,
    ("ingestion.importrejection", "delete_selected"): NOBODY,
    ("ingestion.edgenode", "delete_selected"): anywhere(),
    ("ingestion.edgenode", "create_key"): anywhere(),
    ("ingestion.sensor", "delete_selected"): anywhere(),
    ("ingestion.parameter", "delete_selected"): NOBODY,
    ("ingestion.edgenodekey", "delete_selected"): anywhere(),
    ("ingestion.edgenodekey", "revoke"): anywhere(),
    ("ingestion.observationbatch", "delete_selected"): NOBODY,
    ("ingestion.edgereadingcount", "delete_selected"): NOBODY,
    ("analytics.regionsummary", "delete_selected"): NOBODY,
    ("auth.user", "delete_selected"): SUPERUSER,
    ("auth.group", "delete_selected"): SUPERUSER,
}


# --- the URLconf and the admin's actions -----------------------------------------------------


def _patterns(patterns: list[Any], prefix: str = "", ns: str = "") -> Iterator[tuple[str, str]]:
    """(key, route) of every pattern: its namespaced name, else its full route."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{ns}:{pattern.namespace}" if ns and pattern.namespace else pattern.namespace
            yield from _patterns(pattern.url_patterns, prefix + str(pattern.pattern), inner or ns)
        elif isinstance(pattern, URLPattern):
            route = prefix + str(pattern.pattern)
            name = f"{ns}:{pattern.name}" if ns and pattern.name else pattern.name
            yield (name or route, route)


def _admin_actions() -> dict[tuple[str, str], Any]:
    return {
        (model._meta.label_lower, name): model_admin
        for model, model_admin in admin.site._registry.items()
        for _func, name, _description in model_admin._get_base_actions()
    }


# --- the world the roles act in ----------------------------------------------------------------

SQUARE = MultiPolygon(Polygon.from_bbox((10.0, 10.0, 11.0, 11.0)))


def _world() -> dict[tuple[str, str | None], Any]:
    """Objects by (model label, dataset) for scoped models, (label, None) for the others."""
    objects: dict[tuple[str, str | None], Any] = {}
    for ds in DATASETS:
        dataset = Dataset.objects.create(name=f"{ds} dataset", slug=f"matrix-{ds}")
        place = place_create(
            dataset=dataset,
            source_key=f"{ds}-1",
            data={"name": f"{ds} chapel", "location": Point(10.5, 10.5)},
        )
        job = ImportJob.objects.create(
            dataset=dataset,
            file=f"imports/matrix-{ds}.csv",
            original_name=f"{ds}.csv",
            size_bytes=10,
            sha256="0" * 64,
            format="csv",
            # Inspected, with a mapping the user may still change: every step has a state
            # error to report after the rights are checked, so nothing runs.
            state=ImportState.INSPECTED,
            inspection={"columns": ["id", "name"], "layers": []},
            options={"mapping": {"key": "{id}"}},
        )
        twin = place_create(
            dataset=dataset,
            source_key=f"{ds}-2",
            data={"name": f"{ds} chapel", "location": Point(10.5, 10.5)},
        )
        objects |= {
            ("places.dataset", ds): dataset,
            ("places.place", ds): place,
            ("places.duplicatecandidate", ds): DuplicateCandidate.objects.create(
                place_a=place,
                place_b=twin,
                dataset_a=dataset,
                dataset_b=dataset,
                score=0.9,
                reasons=["exact_coordinates"],
            ),
            ("places.place.revert", ds): {
                "object_id": place.pk,
                "seq": PlaceChange.objects.filter(place=place).latest("seq").seq,
            },
            ("places.place.restore", ds): {"object_id": place.pk, "version": 1},
            ("places.placeattribute", ds): PlaceAttribute.objects.create(
                place=place, key="seats", value_num=40, observed_on=dt.date(2020, 1, 1)
            ),
            ("places.placechange", ds): PlaceChange.objects.filter(place=place).first(),
            ("places.dataversion", ds): DataVersion.objects.get_or_create(
                dataset=dataset, defaults={"version": 1}
            )[0],
            ("places.areaversion", ds): AreaVersion.objects.get_or_create(
                dataset=dataset, cell=0, defaults={"version": 1}
            )[0],
            ("places.placesource", ds): PlaceSource.objects.create(
                place=place, source_values={"name": f"{ds} church"}
            ),
            ("ingestion.importjob", ds): job,
            ("ingestion.importrejection", ds): ImportRejection.objects.create(
                job=job, row_number=2, reason="missing_key"
            ),
        }
    region = Region.objects.create(
        name="Square", level="country", code="SQ", code_system="matrix", geom=SQUARE
    )
    node = EdgeNode.objects.create(name="matrix-node", region=region)
    objects |= {
        ("places.region", None): region,
        ("places.regionpart", None): RegionPart.objects.create(
            region=region, level="country", geom=SQUARE[0]
        ),
        ("ingestion.edgenode", None): node,
        ("ingestion.sensor", None): Sensor.objects.create(node=node, external_id="s1"),
        ("ingestion.parameter", None): Parameter.objects.create(
            code="matrix", name="Matrix", unit="%", min_value=0, max_value=100
        ),
        ("auth.group", None): Group.objects.get(name="viewer"),
        ("analytics.regionsummary", None): RegionSummary.objects.create(
            region=region, level="country", code="SQ", name="Square", places=1, version_key="m"
        ),
        ("auth.user", None): User.objects.create_user("matrix-target"),
    }
    return objects


def _users(own: Dataset) -> dict[str, User | None]:
    users: dict[str, User | None] = {ANON: None}
    users[STAFF] = User.objects.create_user(STAFF, is_staff=True)
    for role in DATASET_ROLES:
        user = User.objects.create_user(f"matrix-{role}")
        dataset_role_grant(user=user, dataset=own, role=role)
        users[role] = user
    users["admin"] = User.objects.create_user("matrix-admin", is_staff=True)
    users["admin"].groups.add(Group.objects.get(name="admin"))
    users["superuser"] = User.objects.create_superuser("matrix-super")
    return users


# --- asking --------------------------------------------------------------------------------------

SAMPLE_KWARGS: dict[str, dict[str, Any]] = {
    "place-tile": {"z": 0, "x": 0, "y": 0},
    "region-tile": {"z": 0, "x": 0, "y": 0},
    "admin:app_list": {"app_label": "places"},
    "admin/(?P<url>.*)$": {},
}


def _url(key: str, route: str, rule: Rule, objects: dict, ds: str | None) -> str:
    if key.startswith("admin/"):
        if "(?P<url>" in route:
            return "/admin/nothing-here/"
        obj = objects.get((rule.obj, ds))
        return "/" + route.replace("<path:object_id>", str(obj.pk if obj else 0))
    kwargs: dict[str, Any] = dict(SAMPLE_KWARGS.get(key, {}))
    if key.endswith("_changelist"):
        pass  # the object is looked for in the list
    elif rule.obj is not None:
        obj = objects.get((rule.obj, ds))
        if isinstance(obj, dict):
            kwargs |= obj
        else:
            kwargs[rule.kwarg] = obj.pk if obj is not None else 0
    elif rule.kind == "public":
        # Any value: the answer only has to be the anonymous one; a real place where it helps.
        place = objects[("places.place", "own")].pk
        for converter, name in re.findall(r"<(\w+):(\w+)>", route):
            kwargs[name] = "matrix-own" if converter == "slug" else place
    elif key == "admin:view_on_site":
        place = objects[("places.place", "own")]
        from django.contrib.contenttypes.models import ContentType

        kwargs = {
            "content_type_id": ContentType.objects.get_for_model(place).pk,
            "object_id": place.pk,
        }
    return reverse(key, kwargs=kwargs)


def _allowed(response: Any, rule: Rule, listed: str | None) -> bool:
    status = response.status_code
    if rule.kind == "answers":
        return status < 400
    if rule.kind == "listed":
        return status == 200 and listed is not None and listed in response.content.decode()
    if status in (301, 302):
        location = response["Location"]
        return not (
            location.startswith(reverse("admin:login")) or location == reverse("admin:index")
        )
    return status == 200


def test_every_url_and_admin_action_answers_every_role_as_the_table_says(monkeypatch, clear_cache):
    # given the URLconf, the admin's actions, and the table
    patterns = dict(_patterns(get_resolver().url_patterns))
    actions = _admin_actions()
    for problem, names in (
        ("URL patterns without an entry in the table", set(patterns) - set(URLS)),
        ("entries for URL patterns that are gone", set(URLS) - set(patterns)),
        ("admin actions without an entry", set(actions) - set(ACTIONS)),
        ("entries for admin actions that are gone", set(ACTIONS) - set(actions)),
    ):
        assert not names, f"{problem}: {sorted(names)}"
    # and every action replaced by a spy that notes it ran
    ran: list[tuple[str, str, list[Any]]] = []

    def spy(name: str, func: Any) -> Any:
        @functools.wraps(func)  # keeps the permissions it declares
        def action(modeladmin: Any, request: Any, queryset: Any) -> None:
            label = modeladmin.model._meta.label_lower
            ran.append((label, name, sorted(queryset.values_list("pk", flat=True))))

        return action

    for (_label, name), model_admin in actions.items():
        if name in admin.site._actions:  # the site's own, shared by every model
            if admin.site._actions[name].__name__ != "action":
                monkeypatch.setitem(admin.site._actions, name, spy(name, admin.site._actions[name]))
        else:
            cls = type(model_admin)
            monkeypatch.setattr(cls, name, spy(name, getattr(cls, name)))
    objects = _world()
    users = _users(objects[("places.dataset", "own")])
    # Rows that the grants and the edge services make.
    node = objects[("ingestion.edgenode", None)]
    objects |= {
        ("places.datasetrole", None): DatasetRole.objects.first(),
        ("places.securityevent", None): SecurityEvent.objects.first(),
        ("ingestion.edgenodekey", None): edge_key_create(node=node).key,
        ("ingestion.observationbatch", None): ObservationBatch.objects.create(
            node=node, idempotency_key="matrix", body_sha256="0" * 64
        ),
        ("ingestion.edgereadingcount", None): EdgeReadingCount.objects.create(
            outcome="accepted", reason="matrix"
        ),
    }
    # A proposal in each dataset by a contributor who is none of the roles tried.
    proposer = User.objects.create_user("matrix-proposer")
    for ds in DATASETS:
        dataset_role_grant(
            user=proposer, dataset=objects[("places.dataset", ds)], role="contributor"
        )
    objects[("places.apitoken", None)] = api_token_create(user=proposer)[0]
    objects[("places.qualityrefresh", None)] = QualityRefresh.objects.create(
        dataset=objects[("places.dataset", "own")], last_seq=0
    )
    for ds in DATASETS:
        objects[("places.placeproposal", ds)] = proposal_create(
            place=objects[("places.place", ds)],
            user=User.objects.get(pk=proposer.pk),
            values={"name": f"{ds} chapel renamed"},
        )
    wrong: list[str] = []
    anonymous: dict[str, int] = {}  # public URLs: the anonymous answer, asked once
    for role in ROLES:
        client = Client()
        if users[role] is not None:
            client.force_login(users[role])
        # when each URL is asked for, on each dataset where it is about one
        for key, rules in URLS.items():
            for rule in rules:
                scoped = rule.obj is not None and (
                    rule.obj.split(".")[:2] and any((rule.obj, ds) in objects for ds in DATASETS)
                )
                for ds in DATASETS if scoped else (None,):
                    url = _url(key, patterns[key], rule, objects, ds)
                    response = getattr(client, rule.method)(url)
                    if rule.kind == "public":
                        if url not in anonymous:
                            anonymous[url] = getattr(Client(), rule.method)(url).status_code
                        expected = anonymous[url]
                        if response.status_code != expected:
                            wrong.append(
                                f"{role} {rule.method} {url}: {response.status_code}, "
                                f"anonymous {expected}"
                            )
                        continue
                    listed = None
                    if rule.kind == "listed":
                        obj = objects.get((rule.obj, ds)) or objects.get((rule.obj, None))
                        listed = f"/{obj.pk}/change/"
                    got = _allowed(response, rule, listed)
                    # then it answers as the table says
                    if got != rule.allowed(role, ds or "own"):
                        wrong.append(
                            f"{role} {rule.method.upper()} {url} ({ds}): "
                            f"{'allowed' if got else 'refused'} ({response.status_code})"
                        )
        # and each action runs only where the table says
        for label, name in actions:
            for ds in DATASETS:
                obj = objects.get((label, ds)) or objects.get((label, None))
                if obj is None:
                    continue
                if (label, None) in objects and ds == "other":
                    continue
                ran.clear()
                app, model = label.split(".")
                client.post(
                    reverse(f"admin:{app}_{model}_changelist"),
                    {"action": name, ACTION_CHECKBOX_NAME: [obj.pk], "index": 0},
                )
                # (an action given none of the rows chosen did not act on them either)
                got = ran == [(label, name, [obj.pk])]
                if got != ACTIONS[(label, name)](role, ds):
                    wrong.append(
                        f"{role} action {label}:{name} ({ds}): {'ran' if got else 'refused'}"
                    )
    assert wrong == [], "\n".join(wrong)
