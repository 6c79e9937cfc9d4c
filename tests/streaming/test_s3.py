"""Object storage for real: an S3 endpoint (moto's server, over HTTP) that `vitlab prepare` writes shards to, a fit
streams them from (through litdata's chunk cache), and the fit's checkpoints are written to (Lightning's fsspec
checkpoint IO, s3fs)."""
import io
import json
import socket

import pytest
import torch

from conftest import FASHION_MNIST_DIR


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on a free local port with a bucket "bucket"; the endpoint also in AWS_ENDPOINT_URL, where
    s3fs (Lightning's checkpoint IO) reads it."""
    boto3 = pytest.importorskip("boto3")  # installed with litdata
    import litdata.streaming.downloader as downloader
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "VITLAB_OBSTORE_ALLOW_HTTP"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", downloader._OBSTORE_CLIENT_OPTIONS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bucket")
    yield {"endpoint_url": endpoint}
    server.stop()


def test_prepare_to_s3_then_fit_from_it_with_checkpoints_written_there(s3, tmp_path, fashion_mnist_available):
    import boto3

    from vitlab import cli
    from vitlab.tools.prepare import main as prepare

    options = json.dumps(s3)
    assert prepare(["fashion_mnist", "--data-dir", FASHION_MNIST_DIR, "--out", "s3://bucket/fm", "--limit", "128",
                    "--num-workers", "1", "--storage-options", options]) == 0
    runs = tmp_path / "runs"
    assert cli.main(["fit", "-c", "configs/quickstart.yaml", "--data", "vitlab.data.StreamingDataModule",
                     "--data.data_dir", "s3://bucket/fm", "--data.storage_options", options,
                     "--data.cache_dir", str(tmp_path / "chunks"), "--data.batch_size", "32",
                     "--data.num_workers", "0", "--model.arch.depth", "1", "--trainer.max_epochs", "1",
                     "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", "s3://bucket/runs/ckpts",
                     "--runs_dir", str(runs), "--run_name", "s3"]) == 0
    client = boto3.client("s3", **s3)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="bucket", Prefix="runs/ckpts/").get("Contents", [])]
    assert "runs/ckpts/last.ckpt" in keys and any(k.endswith(".ckpt") and "val_acc1" in k for k in keys)
    body = client.get_object(Bucket="bucket", Key="runs/ckpts/last.ckpt")["Body"].read()
    ckpt = torch.load(io.BytesIO(body), weights_only=True)
    assert ckpt["global_step"] == 128 // 32 and "model.head.weight" in ckpt["state_dict"]
    assert any((tmp_path / "chunks").rglob("*.bin"))  # streamed through the local chunk cache
    # and a test of the checkpoint in S3, streaming the test split from S3
    assert cli.main(["test", "-c", str(runs / "s3" / "version_0" / "config.yaml"),
                     "--ckpt_path", "s3://bucket/runs/ckpts/last.ckpt"]) == 0
