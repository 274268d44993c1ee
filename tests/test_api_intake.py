"""The field cases and real camera photos through the API: /predict, /predict/batch and
/upload-training-data (local backend). A bad file gets its own error; the others their results."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fruitpipe import imaging

from .conftest import needs_shared
from .intake_support import BAD_CASES, STAR_BOUNDARY, STAR_MULTIPART, STAR_NAME, camera_photos, case, needs_cases
from .service_support import AUTH, make_app, make_backend

pytestmark = [needs_shared, needs_cases]
STATUS = {"truncated": 400, "too_many_pixels": 413}


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture()
def client(store):
    with TestClient(make_app(make_backend(store))) as c:
        yield c


def star_body(field: str, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """The filename*-only multipart case, its part renamed to ``field``, ``extra`` parts before it."""
    body = case(STAR_MULTIPART).replace(b'name="file"', f'name="{field}"'.encode(), 1)
    return extra + body, {"content-type": f"multipart/form-data; boundary={STAR_BOUNDARY}"}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_predict_bad_case_is_a_typed_4xx(client, name):
    r = client.post("/predict", files={"file": (name, case(name), "application/octet-stream")})
    code = BAD_CASES[name]
    assert (r.status_code, r.json()["error"]) == (STATUS[code], code), r.text


def test_predict_camera_photos_are_apples(client):
    for name, data in camera_photos().items():
        r = client.post("/predict", files={"file": (name, data, "image/jpeg")})
        assert r.status_code == 200, (name, r.text)
        assert (r.json()["predicted_class"], r.json()["verdict"]) == ("freshapples", "fresh"), name


def test_batch_isolates_every_bad_case(client):
    files = [("files", (n, case(n), "image/jpeg")) for n in sorted(BAD_CASES)]
    files += [("files", (n, d, "image/jpeg")) for n, d in camera_photos().items()]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    by_name = {item["filename"]: item for item in body["results"]}
    for name, code in BAD_CASES.items():
        assert not by_name[name]["ok"] and by_name[name]["error"] == code
    for name in camera_photos():
        assert by_name[name]["ok"] and by_name[name]["prediction"]["predicted_class"] == "freshapples"
    assert body["ok"] == len(camera_photos()) and body["count"] == len(files)


def test_upload_isolates_bad_cases_and_files_camera_photos(client, store):
    files = [("files", (n, case(n), "image/jpeg")) for n in sorted(BAD_CASES)]
    files += [("files", (n, d, "image/jpeg")) for n, d in camera_photos().items()]
    r = client.post("/upload-training-data", data={"class_name": "freshapples"}, files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["rejected"]) == (len(camera_photos()), len(BAD_CASES))
    by_name = {item["filename"]: item for item in body["results"]}
    for name, code in BAD_CASES.items():
        assert by_name[name]["status"] == "rejected" and by_name[name]["error"] == code
    stored = sorted((store / "dataset" / "freshapples").glob("*.jpg"))
    assert len(stored) == len(camera_photos())
    for path in stored:  # HEIC and AVIF became JPEG, the MPO is kept as it came; all still apples
        assert Image.open(path).format in ("JPEG", "MPO")
        r = client.post("/predict", files={"file": ("s.jpg", path.read_bytes(), "image/jpeg")})
        assert r.json()["predicted_class"] == "freshapples"


def test_upload_of_only_bad_cases_is_400_with_each_reason(client, store):
    files = [("files", (n, case(n), "image/jpeg")) for n in sorted(BAD_CASES)]
    r = client.post("/upload-training-data", data={"class_name": "rottenapples"}, files=files, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"] == "all_rejected"
    assert [x["error"] for x in r.json()["results"]] == [BAD_CASES[n] for n in sorted(BAD_CASES)]
    assert not (store / "dataset" / "rottenapples").exists() or not any((store / "dataset" / "rottenapples").iterdir())


def test_filename_star_only_part_is_a_file_everywhere(client, store):
    body, headers = star_body("file")
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["predicted_class"] == "freshapples", r.text

    body, headers = star_body("files")
    r = client.post("/predict/batch", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["filename"] == STAR_NAME and r.json()["results"][0]["ok"]

    field = (f"--{STAR_BOUNDARY}\r\nContent-Disposition: form-data; name=\"class_name\"\r\n\r\n"
             "freshapples\r\n").encode()
    body, headers = star_body("files", field)
    r = client.post("/upload-training-data", content=body, headers={**headers, **AUTH})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["filename"] == STAR_NAME and r.json()["added"] == 1


def test_two_file_parts_on_predict_is_422_not_last_wins(client):
    a, b = camera_photos()["apple.heic"], case("exif-broken-ifd.jpg")
    r = client.post("/predict", files=[("file", ("a.heic", a, "image/heic")), ("file", ("b.jpg", b, "image/jpeg"))])
    assert r.status_code == 422 and r.json()["error"] == "duplicate_part", r.text


def test_accepted_formats_are_documented_in_openapi(client):
    schema = client.get("/openapi.json").text
    assert imaging.ACCEPTED_NAMES in schema


@pytest.mark.parametrize("disposition,shown", [
    ("form-data; name=\"files\"; filename*=utf-8''pomme%20%C3%A9t%C3%A9.jpg", STAR_NAME),
    ("form-data; name=\"files\"; filename*0*=UTF-8''pomme%20; filename*1*=%C3%A9t%C3%A9.jpg", STAR_NAME),
    ("form-data; name*=UTF-8''files; filename*=\"UTF-8''pomme%20%C3%A9t%C3%A9.jpg\"", STAR_NAME),
    ("form-data; name=\"files\"; filename*=iso-8859-1'fr'caf%E9.jpg", "café.jpg"),
])
def test_extended_disposition_variants_are_files(client, disposition, shown):
    body = (f"--{STAR_BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
            + camera_photos()["camera-mpo-apple.jpg"] + f"\r\n--{STAR_BOUNDARY}--\r\n".encode())
    r = client.post("/predict/batch", content=body,
                    headers={"content-type": f"multipart/form-data; boundary={STAR_BOUNDARY}"})
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["filename"] == shown and item["ok"] and item["prediction"]["predicted_class"] == "freshapples"
