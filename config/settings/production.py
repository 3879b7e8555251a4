"""Production settings: refuse to start when a required secret is missing or DEBUG is on."""

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import DEBUG, SECRET_KEY, env

_missing = [name for name, value in (("SECRET_KEY", SECRET_KEY),) if not value]
if _missing:
    raise ImproperlyConfigured(
        f"Production settings need {', '.join(_missing)} (or {_missing[0]}_FILE) to be set."
    )
if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production: unset DEBUG or set DEBUG=false.")
if not env.list("ALLOWED_HOSTS", default=[]):
    raise ImproperlyConfigured("Production settings need ALLOWED_HOSTS (comma-separated).")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# The load balancer probes the health endpoints over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)
SECURE_CONTENT_TYPE_NOSNIFF = True
