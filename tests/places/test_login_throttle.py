"""Admin login lockout (django-axes, places.login_throttle): failed logins are counted per
client address and per user name, a locked-out client is refused before any password is
hashed and told why, and every login, failure and lockout is in the security audit trail.
The API does not check passwords at all."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from axes.exceptions import AxesBackendRequestParameterRequired
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_login_failed
from django.test import Client, RequestFactory
from django.urls import reverse

from places.models import SecurityEvent

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


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Every password hashed to check it (the test settings' MD5 hasher)."""
    seen: list[str] = []
    verify = MD5PasswordHasher.verify

    def spy(self, password, encoded):
        seen.append(password)
        return verify(self, password, encoded)

    monkeypatch.setattr(MD5PasswordHasher, "verify", spy)
    return seen


def _login(client: Client, username: str, password: str, *, address: str = "198.51.100.7"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def _logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_admin_login_is_locked_with_a_message_after_ten_failures(
    client, curator, clear_cache, hashed
):
    # given ten failed logins for one user name
    for _ in range(LIMIT - 1):
        response = _login(client, "curator", "wrong")
        assert b"correct username and password" in response.content
    _login(client, "curator", "wrong")
    assert len(hashed) == LIMIT
    # when the right password comes next
    response = _login(client, "curator", PASSWORD)
    # then it is refused with 429, saying why and for how long, without hashing the password
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert b"Try again in 15 minutes" in response.content
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    assert not _logged_in(client)
    assert len(hashed) == LIMIT


def test_failures_from_one_address_lock_it_for_every_user_name(client, curator, clear_cache):
    # given ten failures from one address, each for another user name
    for n in range(LIMIT):
        _login(client, f"guess-{n}", "wrong", address="198.51.100.7")
    # then that address cannot log in, even as a user with no failures
    assert _login(client, "curator", PASSWORD).status_code == 429
    assert not _logged_in(client)
    # while another address can
    response = _login(client, "curator", PASSWORD, address="198.51.100.8")
    assert response.status_code == 302
    assert _logged_in(client)


def test_a_successful_login_does_not_reset_the_count(client, curator, clear_cache):
    # given nine failures from one address, then a successful login from it
    for n in range(LIMIT - 1):
        _login(client, f"guess-{n}", "wrong", address="198.51.100.7")
    assert _login(client, "curator", PASSWORD, address="198.51.100.7").status_code == 302
    client.logout()
    # when one more guess fails from that address
    _login(client, "guess-x", "wrong", address="198.51.100.7")
    # then the address is locked: one's own login does not buy more guesses at others
    assert _login(client, "curator", PASSWORD, address="198.51.100.7").status_code == 429


def test_every_password_check_goes_through_the_lockout(curator, clear_cache, hashed):
    # given a password check without a request: refused, there is no way round the count
    with pytest.raises(AxesBackendRequestParameterRequired):
        authenticate(username="curator", password=PASSWORD)
    # and ten failed checks through authenticate() itself, with a request
    request = RequestFactory().post("/", REMOTE_ADDR="198.51.100.9")
    for _ in range(LIMIT):
        assert authenticate(request, username="curator", password="wrong") is None
    # then the right password is refused by the backend too, unhashed
    checked = len(hashed)
    assert authenticate(request, username="curator", password=PASSWORD) is None
    assert len(hashed) == checked


def test_user_names_are_counted_regardless_of_case_and_spaces(client, curator, clear_cache):
    for n in range(LIMIT):
        name = "Curator" if n % 2 else " curator "
        _login(client, name, "wrong", address=f"198.51.100.{n + 10}")
    assert _login(client, "curator", PASSWORD, address="198.51.100.99").status_code == 429


def test_logins_failures_and_lockouts_are_in_the_audit_trail(client, curator, clear_cache):
    # given a login, then failures up to the lockout from another address
    assert _login(client, "curator", PASSWORD, address="198.51.100.20").status_code == 302
    client.logout()
    for _ in range(LIMIT + 5):
        _login(client, "Curator", "wrong", address="198.51.100.21")
    # then the trail has the login with its user and address, each failure up to the lockout
    # and the lockout (attempts refused while locked out add no rows)
    login = SecurityEvent.objects.get(kind="login")
    assert (login.user_id, login.username, login.ip_address) == (
        curator.pk,
        "curator",
        "198.51.100.20",
    )
    failures = SecurityEvent.objects.filter(kind="login_failed")
    assert failures.count() == LIMIT
    assert {(e.username, e.ip_address, e.user_id) for e in failures} == {
        ("curator", "198.51.100.21", None)
    }
    assert SecurityEvent.objects.filter(kind="locked_out", username="curator").count() == 1


def test_the_api_does_not_check_basic_credentials(client, gb_import, curator, failed_checks):
    # given an anonymous API call that sends Basic credentials (right or wrong)
    for password in ("wrong", PASSWORD):
        token = base64.b64encode(f"curator:{password}".encode()).decode()
        # when it is answered
        response = client.get("/api/v1/datasets/", HTTP_AUTHORIZATION=f"Basic {token}")
        # then it is served as any anonymous read, and no password was checked
        assert response.status_code == 200
    assert failed_checks == []
