"""Shared pytest fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API (moto server) on localhost, reachable through the environment.

    The endpoint and dummy credentials are exported as AWS_* variables, so s3fs,
    boto3 and Ray worker processes started later all find it without options.
    """
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    boto3 = pytest.importorskip("boto3")
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


# -- shared data, models and Ray -------------------------------------------------------
import io  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EM_DIR = SHARED / "isbi2012_em_membrane"

#: Small U-Net parameters: a real U-Net, fast enough for CPU tests.
SMALL_UNET = {"depth": 2, "base_channels": 4, "batch_norm": True}


@pytest.fixture(scope="session")
def em_images() -> Path:
    """The real ISBI 2012 EM test slices (512x512 8-bit PNG), used by path."""
    path = EM_DIR / "test" / "image"
    if not path.is_dir():
        pytest.skip(f"shared data not present: {path} (../shared/data is checked out beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def ray_local(s3_server: str) -> Iterator[None]:
    """One real local Ray for the session, started after the S3 env exists so workers inherit it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # never a recorded cluster
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small U-Net checkpoint made here, so weights are known and nothing is downloaded."""
    import torch

    from raysegment.plugin.checkpoint import save_checkpoint
    from raysegment.plugin.registry import get_registry

    info = get_registry().get("unet")
    plugin = info.create(SMALL_UNET)
    torch.manual_seed(0)
    module = plugin.build()
    path = tmp_path_factory.mktemp("ckpt") / "unet-small.pt"
    save_checkpoint(str(path), state_dict=module.state_dict(), plugin="unet", plugin_version=info.version,
                    params=plugin.params, class_names=["cell", "membrane"])
    return str(path)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """One file per kind of bad input; returns name -> a word its error message must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero-byte.png").write_bytes(b"")
    noisy = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (folder / "truncated.png").write_bytes(noisy[: len(noisy) // 2])
    (folder / "not-an-image.png").write_bytes(b"hello, I am text\n" * 20)
    (folder / "notes.txt").write_text("a stray text file\n")
    # A real PNG whose header claims 100000 x 100000 pixels: a decompression bomb.
    import struct
    import zlib

    small = bytearray(png_bytes(np.zeros((8, 8), np.uint8)))
    small[16:24] = struct.pack(">II", 100000, 100000)
    small[29:33] = struct.pack(">I", zlib.crc32(bytes(small[12:29])))
    bomb = bytes(small)
    (folder / "bomb.png").write_bytes(bomb)
    (folder / "rgb.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    return {
        "zero-byte.png": "empty",
        "truncated.png": "truncated",
        "not-an-image.png": "not a valid",
        "notes.txt": "unsupported",
        "bomb.png": "pixels",
        "rgb.png": "band",
    }
