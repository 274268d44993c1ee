"""The admin token fails closed: when Secrets Manager cannot give the token (here the secret is
scheduled for deletion on the moto server, so GetSecretValue answers InvalidRequestException), every
write is refused with 503 — a previously valid token is not accepted any more — while public reads
keep working; once the secret is readable again, writes work again."""

from __future__ import annotations

import json
import time

from tests.aws.conftest import jpeg, multipart
from tests.aws.test_api_handler import REFRESH, api, auth  # noqa: F401  (the API handler fixture)
from tests.conftest import needs_shared

pytestmark = needs_shared


def ask_upload_form(api) -> tuple[int, dict]:  # noqa: F811
    return api("POST", "/upload-url", body=json.dumps({"class_name": "freshapples"}).encode(),
               headers={"content-type": "application/json", **auth()})


def test_unreadable_secret_refuses_writes_with_503_and_keeps_reads(api, aws):  # noqa: F811
    status, out = ask_upload_form(api)
    assert status == 200, out  # the token is read and cached
    aws["sm"].delete_secret(SecretId=aws["secret"], RecoveryWindowInDays=7)
    time.sleep(REFRESH + 0.2)  # past the token cache
    status, out = ask_upload_form(api)
    assert status == 503 and out["error"] == "auth_unavailable", out
    status, out = api("POST", "/retrain", headers=auth())
    assert status == 503, out
    assert api("POST", "/upload-url", body=b"{}", headers={"content-type": "application/json"})[0] == 401
    assert api("GET", "/health")[0] == 200
    body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=1), "image/jpeg")])
    assert api("POST", "/predict", body=body, headers={"content-type": ctype})[0] == 200
    aws["sm"].restore_secret(SecretId=aws["secret"])
    status, out = ask_upload_form(api)  # no cache of the failure: the next request reads again
    assert status == 200, out
