#!/usr/bin/env bash
# Installs the pinned Python tools the checks use into .tools/py (a virtual environment) if
# they are missing, and prints the environment's python: schemathesis and
# openapi-spec-validator (the server API check), standardwebhooks (the reference webhook
# verifier), http-ece (an independent RFC 8291 decryption for the Web Push tests) and botocore
# (AWS's Signature Version 4, which checks the attachment tests' presigned URLs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.tools/py"
if ! "$py/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5" \
  || ! [ -x "$py/bin/openapi-spec-validator" ] \
  || ! "$py/bin/python" -c "import standardwebhooks, http_ece, botocore" 2>/dev/null; then
  python3 -m venv "$py" >&2
  "$py/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==4.32.5" "openapi-spec-validator==0.9.0" "standardwebhooks==1.1.0" \
    "http-ece==1.2.1" "botocore==1.44.5" >&2
fi
echo "$py/bin/python"
