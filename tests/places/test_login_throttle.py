"""Failed logins are throttled per client address and per user name, before any password is
hashed; the API does not check passwords at all."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_login_failed
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-password"
LIMIT = 10  # LOGIN_FAILURE_LIMIT's default


@pytest.fixture
def curator() -> User:
    return User.objects.create_user("curator", password=PASSWORD, is_staff=True)


@pytest.fixture
def failed_checks() -> Iterator[list[str]]:
    """User names of every failed password check (Django's user_login_failed signal)."""
    seen: list[str] = []

    def receiver(sender, credentials, **kwargs):
        seen.append(credentials.get("username"))

    user_login_failed.connect(receiver)
    yield seen
    user_login_failed.disconnect(receiver)


def _login(client: Client, username: str, password: str, *, address: str = "198.51.100.7"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def _logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_admin_login_is_refused_with_a_message_after_ten_failures(
    client, curator, clear_cache, failed_checks
):
    # given ten failed logins for one user name
    for _ in range(LIMIT):
        response = _login(client, "curator", "wrong")
        assert b"correct username and password" in response.content
    assert len(failed_checks) == LIMIT
    # when the right password comes next
    response = _login(client, "curator", PASSWORD)
    # then it is refused, saying why, without a password check
    assert response.status_code == 200
    assert b"Too many failed logins" in response.content
    assert b"Try again in 15 minutes" in response.content
    assert not _logged_in(client)
    assert len(failed_checks) == LIMIT


def test_failures_from_one_address_throttle_it_for_every_user_name(client, curator, clear_cache):
    # given ten failures from one address, each for another user name
    for n in range(LIMIT):
        _login(client, f"guess-{n}", "wrong", address="198.51.100.7")
    # then that address cannot log in, even as a user with no failures
    assert b"Too many failed logins" in _login(client, "curator", PASSWORD).content
    assert not _logged_in(client)
    # while another address can
    response = _login(client, "curator", PASSWORD, address="198.51.100.8")
    assert response.status_code == 302
    assert _logged_in(client)


def test_a_successful_login_clears_its_user_names_failures(client, curator, clear_cache):
    # given nine failures, then a successful login
    for _ in range(LIMIT - 1):
        _login(client, "curator", "wrong", address="198.51.100.7")
    assert _login(client, "curator", PASSWORD, address="198.51.100.7").status_code == 302
    client.logout()
    # when nine more fail from another address
    for _ in range(LIMIT - 1):
        _login(client, "curator", "wrong", address="198.51.100.8")
    # then the user can still log in (eighteen would be over the limit without the reset)
    assert _login(client, "curator", PASSWORD, address="198.51.100.9").status_code == 302


def test_every_password_check_is_throttled_not_only_the_admin_form(curator, clear_cache):
    # given ten failed checks for one user name through authenticate() itself
    for _ in range(LIMIT):
        assert authenticate(username="curator", password="wrong") is None
    # then the right password is refused by the backend too
    assert authenticate(username="curator", password=PASSWORD) is None


def test_user_names_are_counted_regardless_of_case_and_spaces(client, curator, clear_cache):
    for n in range(LIMIT):
        name = "Curator" if n % 2 else " curator "
        _login(client, name, "wrong", address=f"198.51.100.{n + 10}")
    assert b"Too many failed logins" in _login(client, "curator", PASSWORD).content


def test_the_api_does_not_check_basic_credentials(client, gb_import, curator, failed_checks):
    # given an anonymous API call that sends Basic credentials (right or wrong)
    for password in ("wrong", PASSWORD):
        token = base64.b64encode(f"curator:{password}".encode()).decode()
        # when it is answered
        response = client.get("/api/v1/datasets/", HTTP_AUTHORIZATION=f"Basic {token}")
        # then it is served as any anonymous read, and no password was checked
        assert response.status_code == 200
    assert failed_checks == []
