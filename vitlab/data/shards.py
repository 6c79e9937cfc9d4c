"""The shard format ``vitlab prepare`` writes: litdata optimized folders of encoded images.

    OUT/train/   index.json, chunk-*.bin (``litdata.optimize``), vitlab_meta.json
    OUT/val/     the same, where the source has a validation split
    OUT/test/    the same, where the source has a test split

Each sample is ``{"image": bytes, "label": int}``: the image file's own bytes (JPEG, PNG or WebP as found), PNG
for array sources (Fashion-MNIST, CIFAR) and for files in other formats. ``vitlab_meta.json`` says what the split
holds: ``{"format": 1, "classes": [...], "num_samples": N, "source": ..., "split": ..., "in_chans": 1|3,
"native_size": int|null, "skipped": [{"file": ..., "error": ...}]}``; it is written last, so a split with it is
complete. OUT may be a local folder or an ``s3://bucket/prefix`` URL; ``storage_options`` are boto3 client
arguments (``{"endpoint_url": ...}``), as litdata takes them.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from PIL import Image

from vitlab.data.image_io import ImageDecodeError, convert_mode

FORMAT = 1
META_NAME = "vitlab_meta.json"
SPLITS = ("train", "val", "test")
_ALLOW_HTTP_ENV = "VITLAB_OBSTORE_ALLOW_HTTP"


# ----------------------------------------------------------------------------------------------- paths
def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``s3://...``) rather than a local path."""
    return "://" in str(path)


def join(root: str, *names: str) -> str:
    """``root/name/...`` for a local path or a URL."""
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *names])
    return os.path.join(root, *names)


def bucket_and_key(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ValueError for other URLs."""
    scheme, _, rest = url.partition("://")
    if scheme != "s3":
        raise ValueError(f"{url}: only local folders and s3:// URLs are supported")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket name")
    return bucket, key.strip("/")


def _s3(storage_options: dict | None) -> Any:
    """A boto3 S3 client made as litdata makes its own: ``storage_options`` are the client's arguments."""
    import boto3

    return boto3.session.Session().client("s3", **(storage_options or {}))


# ----------------------------------------------------------------------------------------------- files
def read_bytes(path: str, storage_options: dict | None = None) -> bytes:
    """The bytes of a local file or an object. Raises FileNotFoundError when there is none."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    from botocore.exceptions import ClientError

    bucket, key = bucket_and_key(path)
    try:
        return _s3(storage_options).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            raise FileNotFoundError(path) from e
        raise


def write_bytes(path: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a local file (atomically: a temporary file renamed over it) or an object."""
    if is_remote(path):
        bucket, key = bucket_and_key(path)
        _s3(storage_options).put_object(Bucket=bucket, Key=key, Body=data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def list_files(folder: str, storage_options: dict | None = None, limit: int | None = None) -> dict[str, int]:
    """The files under ``folder`` (recursively) as ``{path relative to folder: size}``, at most ``limit`` of them;
    empty when the folder does not exist."""
    found: dict[str, int] = {}
    if not is_remote(folder):
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = os.path.getsize(path)
                if limit is not None and len(found) >= limit:
                    return found
        return found
    bucket, key = bucket_and_key(folder)
    prefix = key + "/" if key else ""
    for page in _s3(storage_options).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix):]] = obj["Size"]
            if limit is not None and len(found) >= limit:
                return found
    return found


def remove_files(folder: str, names: list[str] | None = None, storage_options: dict | None = None) -> None:
    """Delete ``names`` (relative to ``folder``), or the whole folder when ``names`` is None."""
    if not is_remote(folder):
        if names is None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        else:
            for name in names:
                if os.path.exists(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
        return
    names = list(list_files(folder, storage_options)) if names is None else names
    bucket, key = bucket_and_key(folder)
    client = _s3(storage_options)
    for start in range(0, len(names), 1000):  # delete_objects takes at most 1000 keys
        objects = [{"Key": "/".join(filter(None, [key, n]))} for n in names[start:start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


# ----------------------------------------------------------------------------------------------- meta
def write_meta(split_dir: str, meta: dict, storage_options: dict | None = None) -> None:
    """Write ``split_dir/vitlab_meta.json`` (``format`` is set to :data:`FORMAT`)."""
    meta = {"format": FORMAT, **{k: v for k, v in meta.items() if k != "format"}}
    write_bytes(join(split_dir, META_NAME), json.dumps(meta, indent=1).encode(), storage_options)


def read_meta(split_dir: str, storage_options: dict | None = None) -> dict:
    """The ``vitlab_meta.json`` of a split folder (local or URL).

    Raises:
        ValueError: No meta file (not a finished ``vitlab prepare`` split), or one of another format; the message
            names the folder.
    """
    try:
        meta = json.loads(read_bytes(join(split_dir, META_NAME), storage_options))
    except FileNotFoundError:
        raise ValueError(f"{split_dir} has no {META_NAME}: not a split written by `vitlab prepare` "
                         f"(or one still being written)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{join(split_dir, META_NAME)} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{split_dir}: {META_NAME} is of format {found!r}, this vitlab reads format {FORMAT}")
    return meta


# ----------------------------------------------------------------------------------------------- images
def decode_image(data: bytes, mode: str, index: int | None = None) -> Image.Image:
    """Decode a sample's ``image`` bytes into a loaded PIL image in ``mode`` ("RGB" or "L").

    Raises:
        ImageDecodeError: The bytes are not a decodable image; the message names the sample ``index``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return convert_mode(img, mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        where = f"sample {index}" if index is not None else "a sample"
        raise ImageDecodeError(f"cannot decode the image of {where} ({len(data)} bytes): {e}") from e


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes of ``img``."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; the images are small or already compressed elsewhere
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- http endpoints
def allow_http_endpoint(storage_options: dict | None) -> bool:
    """Let litdata reach an ``http://`` endpoint (MinIO, moto) in this process; True when it is one.

    litdata (0.2.x) moves chunks with obstore, building its store with fixed client options that lack
    ``allow_http``, and obstore then ignores ``AWS_ALLOW_HTTP``: an http endpoint fails with "HTTP error: builder
    error" (reqwest's BadScheme). This adds ``allow_http`` to those options here, and sets
    ``VITLAB_OBSTORE_ALLOW_HTTP`` so processes that import this module do the same; processes forked from this one
    inherit it.
    """
    endpoint = str((storage_options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "")
    if not endpoint.startswith("http://"):
        return False
    os.environ[_ALLOW_HTTP_ENV] = "1"
    _patch_obstore_options()
    return True


def _patch_obstore_options() -> None:
    try:
        import litdata.streaming.downloader as downloader
    except ImportError:
        return
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict) and not options.get("allow_http"):
        downloader._OBSTORE_CLIENT_OPTIONS = {**options, "allow_http": True}


if os.environ.get(_ALLOW_HTTP_ENV) == "1":
    _patch_obstore_options()
