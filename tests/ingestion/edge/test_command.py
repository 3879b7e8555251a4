"""manage.py create_edge_node: prints the key once, refuses a taken name unless --new-key."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ingestion.edge.models import EdgeNode, EdgeNodeKey
from ingestion.edge.services.keys import edge_key_authenticate
from tests.ingestion.edge.factories import region_make

pytestmark = pytest.mark.django_db


def _run(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_edge_node", *args, stdout=out)
    return out.getvalue().splitlines()


def test_creates_a_node_and_prints_a_working_key_on_the_last_line():
    # given
    region = region_make("CMD1")

    # when
    lines = _run("box-cmd-1", "--region", "CMD1", "--expires-days", "30")

    # then
    node = EdgeNode.objects.get(name="box-cmd-1")
    assert node.region == region
    key = edge_key_authenticate(raw=lines[-1], scope="push_readings")
    assert key.node == node
    assert key.expires_at is not None
    assert "created node box-cmd-1" in lines[0]
    assert lines[-1] not in str(list(EdgeNodeKey.objects.filter(node=node).values()))


def test_an_existing_name_is_refused_unless_a_new_key_is_asked_for():
    region_make("CMD2")
    first = _run("box-cmd-2", "--region", "CMD2")[-1]

    with pytest.raises(CommandError, match="already exists; pass --new-key"):
        _run("box-cmd-2", "--region", "CMD2")

    second = _run("box-cmd-2", "--region", "CMD2", "--new-key", "--scopes", "pull_places")[-1]
    assert second != first
    assert EdgeNode.objects.filter(name="box-cmd-2").count() == 1
    assert EdgeNodeKey.objects.filter(node__name="box-cmd-2").count() == 2
    assert edge_key_authenticate(raw=second, scope="pull_places").node.name == "box-cmd-2"


def test_a_code_shared_by_two_systems_needs_the_system():
    region_make("CMD3", code_system="sys-a")
    wanted = region_make("CMD3", code_system="sys-b")

    with pytest.raises(CommandError, match=r"several regions .* --code-system"):
        _run("box-cmd-3", "--region", "CMD3")

    _run("box-cmd-3", "--region", "CMD3", "--code-system", "sys-b")
    assert EdgeNode.objects.get(name="box-cmd-3").region == wanted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "NOPE"], "no region with the code 'NOPE'"),
        (["--region", "CMD4", "--expires-days", "0"], "positive"),
    ],
)
def test_bad_arguments_are_refused_clearly(args, message):
    region_make("CMD4")

    with pytest.raises(CommandError, match=message):
        _run("box-cmd-4", *args)

    assert not EdgeNode.objects.filter(name="box-cmd-4").exists()


def test_a_new_key_for_a_node_of_another_region_is_refused():
    region_make("CMD5")
    region_make("CMD6")
    _run("box-cmd-5", "--region", "CMD5")

    with pytest.raises(CommandError, match="serves"):
        _run("box-cmd-5", "--region", "CMD6", "--new-key")
