from django.apps import AppConfig


class PlacesConfig(AppConfig):
    name = "places"
    verbose_name = "Places gazetteer"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from places import login_throttle

        # Every failed password check counts, whichever view or backend asked for it.
        user_login_failed.connect(login_throttle.on_login_failed, dispatch_uid="login-throttle")
        user_logged_in.connect(login_throttle.on_logged_in, dispatch_uid="login-throttle")
