"""The S3 drop folder loses nothing (moto server): the ingest acts only on the object version an
event names, maps a key to exactly one object whether the event carries it as stored or
form-encoded, quarantines the bytes it validated, and counts each image exactly once even when it
crashes between filing and counting."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from fruitpipe.backends.aws import NewImageCounter, S3DataStore
from tests.aws.conftest import counter, jpeg, keys, object_created_event
from tests.conftest import needs_shared

pytestmark = needs_shared
KEY = "incoming/freshapples/IMG_0001.jpg"


def put(aws, key: str, data: bytes, bucket: str | None = None) -> dict:
    resp = aws["s3"].put_object(Bucket=bucket or aws["data"], Key=key, Body=data)
    return {"version_id": resp.get("VersionId"), "etag": resp["ETag"].strip('"')}


class RacingS3:
    """The store's S3 client, with another upload landing under the same key right after the
    ingest has read its object (the collision window of a real drop folder)."""

    def __init__(self, s3, key: str, data: bytes) -> None:
        self._s3, self.key, self.data, self.landed = s3, key, data, None

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def get_object(self, **kw):
        out = self._s3.get_object(**kw)
        if self.landed is None and kw["Key"] == self.key:
            self.landed = self._s3.put_object(Bucket=kw["Bucket"], Key=self.key, Body=self.data)
        return out


def store(aws, s3=None, bucket=None) -> S3DataStore:
    return S3DataStore(bucket or aws["data"], NewImageCounter(aws["table"]), s3=s3 or aws["s3"])


def ingest(st: S3DataStore, key: str, *, version_id=None, etag=None):
    return st.ingest(key, None, version_id=version_id, etag=etag)


def versions(aws, prefix: str = "incoming/") -> tuple[list, list]:
    resp = aws["s3"].list_object_versions(Bucket=aws["data"], Prefix=prefix)
    return resp.get("Versions", []), resp.get("DeleteMarkers", [])


def test_second_photo_on_the_same_key_during_ingest_is_kept_and_filed_by_its_own_event(aws):
    first, second = jpeg(seed=1), jpeg(seed=2)
    ev1 = put(aws, KEY, first)
    racing = RacingS3(aws["s3"], KEY, second)
    out = ingest(store(aws, racing), KEY, **ev1)
    assert racing.landed is not None  # the second photo arrived mid-ingest
    assert out.status == "added"
    assert out.dataset_key == f"dataset/freshapples/{hashlib.sha256(first).hexdigest()}.jpg"
    # the second photo is still there, as the current (only) version; no delete marker hides it
    live, markers = versions(aws)
    assert [(v["Key"], v["VersionId"]) for v in live] == [(KEY, racing.landed["VersionId"])] and markers == []
    out2 = ingest(store(aws), KEY, version_id=racing.landed["VersionId"], etag=racing.landed["ETag"].strip('"'))
    assert out2.status == "added"
    assert keys(aws) == sorted(f"dataset/freshapples/{hashlib.sha256(d).hexdigest()}.jpg" for d in (first, second))
    assert versions(aws) == ([], []) and counter(aws) == 2
    assert ingest(store(aws), KEY, **ev1).status == "gone"  # a redelivered first event changes nothing
    assert counter(aws) == 2


def test_quarantine_keeps_the_bytes_it_validated_not_a_later_upload(aws):
    bad, good = b"\xff\xd8\xff\xe0 not really a jpeg", jpeg(seed=3)
    ev = put(aws, KEY, bad)
    racing = RacingS3(aws["s3"], KEY, good)
    out = ingest(store(aws, racing), KEY, **ev)
    assert out.status == "quarantined" and out.error == "not_an_image"
    assert aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{KEY}")["Body"].read() == bad
    reason = json.loads(aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{KEY}.reason.json")["Body"].read())
    assert reason["version_id"] == ev["version_id"] and reason["kept"] is True
    assert aws["s3"].get_object(Bucket=aws["data"], Key=KEY)["Body"].read() == good  # untouched
    assert ingest(store(aws), KEY, version_id=racing.landed["VersionId"]).status == "added"


@pytest.mark.parametrize("versioned", [True, False])
def test_plus_and_space_keys_map_to_exactly_one_object(aws, versioned):
    bucket = aws["data"]
    if not versioned:
        bucket = f"plain-{uuid.uuid4().hex[:8]}"
        aws["s3"].create_bucket(Bucket=bucket)
    plus, space = "incoming/freshapples/a+b.jpg", "incoming/freshapples/a b.jpg"
    img_plus, img_space = jpeg(seed=4), jpeg(seed=5)
    ev_plus, ev_space = put(aws, plus, img_plus, bucket), put(aws, space, img_space, bucket)
    st = store(aws, bucket=bucket)
    # EventBridge: the key as stored. "a+b.jpg" is the object named a+b.jpg, never "a b.jpg".
    out = ingest(st, plus, **ev_plus)
    assert out.status == "added" and out.key == plus
    assert out.dataset_key.endswith(hashlib.sha256(img_plus).hexdigest() + ".jpg")
    remaining = sorted(o["Key"] for o in aws["s3"].list_objects_v2(Bucket=bucket, Prefix="incoming/")["Contents"])
    assert remaining == [space]
    # S3's own notifications form-encode: "a b.jpg" arrives as "a+b.jpg" and is found decoded.
    event = object_created_event(bucket, space, len(img_space), encode=True, **ev_space)
    assert event["detail"]["object"]["key"] == plus
    out = ingest(st, event["detail"]["object"]["key"], **ev_space)
    assert out.status == "added" and out.key == space
    assert out.dataset_key.endswith(hashlib.sha256(img_space).hexdigest() + ".jpg")
    assert aws["s3"].list_objects_v2(Bucket=bucket, Prefix="incoming/").get("KeyCount") == 0


def test_unversioned_bucket_leaves_a_replaced_object_to_its_own_event(aws):
    bucket = f"plain-{uuid.uuid4().hex[:8]}"
    aws["s3"].create_bucket(Bucket=bucket)
    old = put(aws, KEY, jpeg(seed=6), bucket)
    newer = jpeg(seed=7)
    put(aws, KEY, newer, bucket)
    assert ingest(store(aws, bucket=bucket), KEY, **old).status == "gone"  # its ETag no longer matches
    assert aws["s3"].get_object(Bucket=bucket, Key=KEY)["Body"].read() == newer


def test_oversize_object_is_not_copied_into_quarantine(aws):
    from fruitpipe import imaging
    ev = put(aws, KEY, b"\xff\xd8\xff" + b"\0" * (imaging.MAX_BYTES + 1))
    out = ingest(store(aws), KEY, **ev)
    assert out.status == "quarantined" and out.error == "too_large"
    assert keys(aws) == [f"quarantine/{KEY}.reason.json"]  # the reason only, and the upload is gone
    reason = json.loads(aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{KEY}.reason.json")["Body"].read())
    assert reason["kept"] is False and str(imaging.MAX_BYTES) in reason["detail"]
    assert versions(aws) == ([], [])


class CrashOnce:
    """A DynamoDB client whose first transaction dies (the function crashing right after the
    S3 write, before the count)."""

    def __init__(self, ddb) -> None:
        self._ddb, self.crashed = ddb, False

    def __getattr__(self, name):
        return getattr(self._ddb, name)

    def transact_write_items(self, **kw):
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("killed between the S3 write and the count")
        return self._ddb.transact_write_items(**kw)


def test_a_crash_between_filing_and_counting_is_completed_by_the_retry(aws):
    data = jpeg(seed=8)
    ev = put(aws, KEY, data)
    st = S3DataStore(aws["data"], NewImageCounter(aws["table"], client=CrashOnce(aws["ddb"])), s3=aws["s3"])
    with pytest.raises(RuntimeError):
        ingest(st, KEY, **ev)
    filed = f"dataset/freshapples/{hashlib.sha256(data).hexdigest()}.jpg"
    assert keys(aws) == [filed, KEY] and counter(aws) == 0  # stored, not counted, upload kept for the retry
    assert ingest(st, KEY, **ev).status == "added"  # the retry (EventBridge/Lambda redelivery)
    assert keys(aws) == [filed] and counter(aws) == 1
    ev2 = put(aws, "incoming/freshapples/copy.jpg", data)
    assert ingest(st, "incoming/freshapples/copy.jpg", **ev2).status == "duplicate"
    assert counter(aws) == 1
