"""``fruitpipe upload --class C PATH... [--api URL | --bucket B]``: add training images (files or folders).

With ``--api`` (default ``$FRUITPIPE_API`` or http://127.0.0.1:8000) the files go to any fruitpipe
server, local or AWS, through ``POST /upload-training-data`` (admin token), and each file's result
is printed (added, duplicate, rejected with the reason).
With ``--api ... --presigned`` (AWS) the service hands out presigned S3 POST forms
(``POST /upload-url``: one exact key each, the size bounded, valid a few minutes) and the files are
POSTed to S3 directly, so neither API Gateway's nor Lambda's payload limits apply.
With ``--bucket`` the files go straight to ``s3://B/incoming/<class>/`` with your AWS credentials.
On AWS the ingest function then validates, de-duplicates and files them within seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..cli import UsageError, command
from ..client import ClientError
from .http import add_api_args, api_base, api_client, api_token

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
EXIT_NOTHING_ADDED = 1  # every file rejected or too large (README.md, the exit-code table)
BATCH = 20  # upload forms asked for at a time: each expires minutes after it is handed out


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                   help="image files and/or folders of images (searched recursively)")
    p.add_argument("--class", dest="label", required=True, help="class of every image given")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bucket", help="data bucket name (uses your AWS credentials)")
    add_api_args(where, p)
    p.add_argument("--presigned", action="store_true",
                   help="with --api on AWS: POST the files to S3 through presigned upload forms (POST /upload-url)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _images(paths: list[Path]) -> list[tuple[Path, Path]]:
    """The images to send, each with the folder it was found under (its own parent for a file
    named directly): a file is taken as given (the server judges its content), a folder is
    searched recursively for .jpg/.jpeg/.png/.webp. Raises UsageError for a path that does not
    exist or a folder without images."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_file():
            found.append((path, path.parent))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UsageError(f"no .jpg/.jpeg/.png/.webp files in {path}")
            found += [(f, path) for f in files]
        else:
            raise UsageError(f"{path}: no such file or folder")
    return found


def _progress(total: int, quiet: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm
    return tqdm(total=total, unit="file", disable=quiet, file=sys.stderr, desc="upload")


def _post_json(url: str, body: dict, token: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except ValueError:
            detail = ""
        raise UsageError(f"{url}: HTTP {exc.code} {detail}".strip()) from None
    except urllib.error.URLError as exc:
        raise UsageError(f"{url}: {exc.reason}") from None


def _post_form(slot: dict, data: bytes, name: str) -> None:
    """POST ``data`` with the presigned form ``slot`` (``url``, ``fields``): the fields as signed,
    then the file last, as S3 requires."""
    from urllib3 import encode_multipart_formdata
    fields = [*slot["fields"].items(), ("file", (name, data, slot["fields"].get("Content-Type", "")))]
    body, ctype = encode_multipart_formdata(fields)
    req = urllib.request.Request(slot["url"], data=body, method="POST", headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
    except urllib.error.URLError as exc:
        raise UsageError(f"upload {name}: {getattr(exc, 'code', '')} {getattr(exc, 'reason', exc)}".strip()) from None


@command("upload", _args)
def _upload(args: argparse.Namespace) -> int:
    """Upload image files and/or folders of images of one class (API, or the S3 drop folder).

    Exits 0 when any image was added or was already there, 1 when nothing was (every file rejected or
    too large), 2 for bad input (a missing path, an unknown class, a bad token)."""
    from .. import imaging
    from ..dataset import check_label, UnknownClass
    try:
        check_label(args.label)
    except UnknownClass as exc:
        raise UsageError(str(exc)) from None
    found = _images(args.paths)
    root = dict(found)
    files = [f for f, _ in found]
    too_big = [f for f in files if f.stat().st_size > imaging.MAX_BYTES]
    for f in too_big:
        print(f"skipped: {f}: larger than {imaging.MAX_BYTES} bytes", file=sys.stderr)
    files = [f for f in files if f not in too_big]
    sent = 0
    bar = _progress(len(files), args.quiet)
    try:
        if args.bucket:
            import boto3
            from ..backends.aws import safe_name
            s3 = boto3.client("s3")
            for f in files:
                rel = "_".join(f.relative_to(root[f]).parts[:-1] + (safe_name(f.name),))
                s3.upload_file(str(f), args.bucket, f"incoming/{args.label}/{rel}")
                sent += 1
                bar.update(1)
        elif not args.presigned:
            client = api_client(args)
            results = []
            try:
                for f in files:  # one file a request keeps the progress bar honest
                    results += client.upload(args.label, [f])
                    bar.update(1)
            except ClientError as exc:
                raise UsageError(str(exc)) from None
            bar.close()
            for r in results:
                print(json.dumps(r))
            # the keys of the API's own upload answer (UploadResponse): class_name, added, duplicates, rejected
            counts = {key: sum(r["status"] == status for r in results)
                      for key, status in (("added", "added"), ("duplicates", "duplicate"), ("rejected", "rejected"))}
            print(json.dumps({"class_name": args.label, **counts, "skipped": len(too_big)}))
            return 0 if counts["added"] + counts["duplicates"] else EXIT_NOTHING_ADDED
        else:
            token = api_token(args)
            base = api_base(args)
            for start in range(0, len(files), BATCH):
                chunk = files[start:start + BATCH]
                answer = _post_json(f"{base}/upload-url", {"class_name": args.label,
                                                           "filenames": [f.name for f in chunk]}, token)
                for f, slot in zip(chunk, answer["uploads"]):
                    _post_form(slot, f.read_bytes(), f.name)
                    sent += 1
                    bar.update(1)
    finally:
        bar.close()
    print(json.dumps({"class_name": args.label, "uploaded": sent, "skipped": len(too_big),
                      "note": "the ingest function files them into dataset/ (duplicates once, bad files "
                              "to quarantine/ with a reason)"}))
    return EXIT_NOTHING_ADDED if too_big and not sent else 0
