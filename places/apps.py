from django.apps import AppConfig


class PlacesConfig(AppConfig):
    name = "places"
    verbose_name = "Places gazetteer"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.models import User
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.models.signals import m2m_changed

        from places import login_throttle, metrics
        from places.services import access

        # The security audit trail: logins, failed logins (axes counts them for the lockout)
        # and lockouts, whichever view or backend asked for the password check.
        user_login_failed.connect(login_throttle.on_login_failed, dispatch_uid="audit-login")
        user_logged_in.connect(login_throttle.on_logged_in, dispatch_uid="audit-login")
        user_locked_out.connect(login_throttle.on_locked_out, dispatch_uid="audit-login")
        # The admin role is a group membership, changed in the users' admin: logged too.
        m2m_changed.connect(
            access.on_groups_changed, sender=User.groups.through, dispatch_uid="audit-roles"
        )
        # Queue lengths, connections and backups read at each scrape; Celery tasks timed.
        metrics.metrics_register()
