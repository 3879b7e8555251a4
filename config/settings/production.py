"""Production settings: refuse to start when a required secret is missing or weak, DEBUG is on,
or any host name would be accepted."""

from django.core.exceptions import ImproperlyConfigured

from config.security import secret_key_weakness
from config.settings.base import *  # noqa: F403
from config.settings.base import (
    ALLOWED_HOSTS,
    DATABASES,
    DEBUG,
    SECRET_KEY,
    env,
    uploads_storage,
)

if not SECRET_KEY:
    raise ImproperlyConfigured(
        "Production settings need SECRET_KEY (or SECRET_KEY_FILE) to be set."
    )
if weakness := secret_key_weakness(SECRET_KEY):
    raise ImproperlyConfigured(
        f"SECRET_KEY is too weak for production: {weakness}. Generate one with "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'."
    )
if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production: unset DEBUG or set DEBUG=false.")
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("Production settings need ALLOWED_HOSTS (comma-separated).")
if "*" in ALLOWED_HOSTS:
    # A wildcard lets any Host header through: password-reset links and absolute URLs could
    # then name an attacker's host. List the real names (".example.org" covers subdomains).
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS=* is refused in production: list the host names the site answers to."
    )

# Rotating SECRET_KEY: the previous keys here keep sessions and signed links valid meanwhile
# (docker/README.md, "Rotate secrets").
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

STORAGES = {
    "default": uploads_storage(),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# The load balancer probes the health endpoints over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
# A year, for every subdomain, and eligible for the browsers' preload list: once a browser has
# seen it, it will not talk to any of our hosts over plain HTTP for a year.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True

# Behind PgBouncer in transaction mode (make prod's web), a server-side cursor (Django's
# .iterator()) would outlive its transaction's server connection: such a connection sets
# DB_DISABLE_SERVER_SIDE_CURSORS. Session advisory locks break there too, which is why the
# workers (imports) connect through PgBouncer's session pool instead (bin/pgbouncer-conf).
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool(
    "DB_DISABLE_SERVER_SIDE_CURSORS", default=False
)
