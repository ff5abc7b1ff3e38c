"""The image's HEALTHCHECK: GET $SEALEDBUS_HEALTHCHECK_URL (the KDS's /healthz on loopback) and
exit 0 on 200, 1 otherwise. The KDS's certificate names its service, not 127.0.0.1, so this
loopback probe checks liveness only and does not verify it (it sends nothing secret)."""

import os
import ssl
import sys
import urllib.request

url = os.environ.get("SEALEDBUS_HEALTHCHECK_URL", "https://127.0.0.1:8443/healthz")
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(url, timeout=4, context=context) as response:  # noqa: S310
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
