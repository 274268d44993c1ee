"""Presigned uploads are bounded: ``POST /upload-url`` hands out presigned S3 POST forms whose signed
policy pins one exact key under ``incoming/<class>/``, the content type, 1..MAX_BYTES bytes and a
short expiry.

moto's S3 accepts any POST form without checking its policy (checked: a 500-byte file passes a
100-byte ``content-length-range``), so the policy document S3 would enforce is decoded and checked
here field by field, against the rules of S3's POST policy (AWS S3 API reference, "Creating a POST
policy": every form field must match a condition; ``content-length-range`` bounds the file size;
``expiration`` is an ISO-8601 UTC time)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from fruitpipe import imaging
from fruitpipe.backends.aws import PRESIGN_SECONDS, S3DataStore

pytestmark = pytest.mark.usefixtures("moto_server")


def policy_of(slot: dict) -> dict:
    return json.loads(base64.b64decode(slot["fields"]["policy"]))


def conditions(policy: dict) -> tuple[dict[str, str], list[list]]:
    """Exact-match conditions as {field: value} (both spellings S3 accepts) and the others."""
    exact: dict[str, str] = {}
    other: list[list] = []
    for cond in policy["conditions"]:
        if isinstance(cond, dict):
            ((field, value),) = cond.items()
            exact[field.lower()] = value
        elif cond[0] == "eq":
            exact[cond[1].lstrip("$").lower()] = cond[2]
        else:
            other.append(cond)
    return exact, other


def test_policy_pins_key_type_size_and_a_short_expiry(aws):
    store = S3DataStore(aws["data"])
    before = datetime.now(timezone.utc)
    slot = store.presign_upload("freshbanana", "../../etc/IMG 0001.JPG")
    policy = policy_of(slot)
    exact, other = conditions(policy)
    assert slot["method"] == "POST" and slot["key"].startswith("incoming/freshbanana/")
    assert "/" not in slot["key"][len("incoming/freshbanana/"):]  # the client's name cannot leave the folder
    assert exact["bucket"] == aws["data"]
    assert exact["key"] == slot["key"] == slot["fields"]["key"]  # exact key, no starts-with
    assert exact["content-type"] == slot["fields"]["Content-Type"] == "image/jpeg"
    assert other == [["content-length-range", 1, imaging.MAX_BYTES]]  # nothing else, no starts-with
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert 0 < (expires - before).total_seconds() <= PRESIGN_SECONDS + 2 and PRESIGN_SECONDS <= 300
    # every form field the client is told to send is covered by an exact condition (or is the
    # signature machinery S3 excludes from the policy)
    signing = {"policy", "x-amz-signature"}
    assert {f.lower() for f in slot["fields"]} - signing <= set(exact)


@pytest.mark.parametrize("name,ctype", [("a.png", "image/png"), ("b.webp", "image/webp"),
                                        ("c.heic", "image/heic"), ("d.bin", "application/octet-stream")])
def test_content_type_follows_the_file_name(aws, name, ctype):
    slot = S3DataStore(aws["data"]).presign_upload("rottenoranges", name)
    assert conditions(policy_of(slot))[0]["content-type"] == ctype == slot["fields"]["Content-Type"]


def test_each_upload_gets_its_own_key(aws):
    store = S3DataStore(aws["data"])
    assert len({store.presign_upload("freshapples", "IMG_0001.jpg")["key"] for _ in range(5)}) == 5
