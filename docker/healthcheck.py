"""Container health check (Dockerfile HEALTHCHECK): exit 0 when /health/live/ answers 200.

The slim image has no curl, so this uses the standard library. Django answers 400 to a Host
header it does not allow, so the request names the first entry of ALLOWED_HOSTS (".example.com"
becomes "example.com"; "*" or nothing becomes "localhost"). Proxy variables are ignored: the
request goes straight to gunicorn in this container.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_SECONDS = 4


def main() -> int:
    first_host = os.environ.get("ALLOWED_HOSTS", "").split(",")[0].strip()
    host = first_host.lstrip("*.") or "localhost"
    port = os.environ.get("PORT", "8000")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/health/live/", headers={"Host": host}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except OSError as exc:  # URLError/HTTPError (non-2xx), refused, timed out
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
