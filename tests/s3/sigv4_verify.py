"""Checks presigned S3 requests with botocore, AWS's own Signature Version 4 implementation.

Reads one JSON object per line on stdin — {"method", "url", "headers", "access_key",
"secret_key", "region"}, where `url` is the request as received (scheme, Host header, raw path
and query) and `headers` holds the request's values of the headers it claims to sign — and
answers one line each: {"ok": true} or {"ok": false, "why": "..."}.
"""

import datetime
import json
import sys
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def check(r):
    parts = urlsplit(r["url"])
    raw = [p for p in parts.query.split("&") if p]
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                 "X-Amz-SignedHeaders", "X-Amz-Signature"):
        if name not in params:
            return f"{name} is missing"
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return "not AWS4-HMAC-SHA256"
    stamp = params["X-Amz-Date"]
    scope = f"{r['access_key']}/{stamp[:8]}/{r['region']}/s3/aws4_request"
    if params["X-Amz-Credential"] != scope:
        return f"credential {params['X-Amz-Credential']} is not {scope}"
    signed = params["X-Amz-SignedHeaders"].split(";")
    if "host" not in signed:
        return "host is not signed"
    headers = {k.lower(): v for k, v in r["headers"].items()}
    missing = [h for h in signed if h not in headers]
    if missing:
        return f"signed headers missing from the request: {missing}"
    at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > at + datetime.timedelta(seconds=int(params["X-Amz-Expires"])):
        return "Request has expired"
    unsigned = "&".join(p for p in raw if not p.startswith("X-Amz-Signature="))
    url = f"{parts.scheme}://{parts.netloc}{parts.path}?{unsigned}"
    auth = S3SigV4QueryAuth(Credentials(r["access_key"], r["secret_key"]), "s3", r["region"])
    request = AWSRequest(method=r["method"], url=url, headers={h: headers[h] for h in signed})
    request.context["timestamp"] = stamp
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if expected != params["X-Amz-Signature"]:
        return "SignatureDoesNotMatch"
    return None


for line in sys.stdin:
    try:
        why = check(json.loads(line))
    except Exception as err:  # a malformed request is refused, not a crash
        why = f"unreadable: {err}"
    print(json.dumps({"ok": why is None} if why is None else {"ok": False, "why": why}), flush=True)
