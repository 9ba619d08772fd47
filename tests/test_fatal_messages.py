"""Fatal messages that name what failed and what to do, and secrets that never show.

A real HTTP server on 127.0.0.1 answers 503 to everything: S3 (s3fs and botocore,
pointed at it as an endpoint) and fsspec's HTTP filesystem meet a real unavailable
store. Checkpoints are real files: random bytes, pickles that would run code,
truncated ``torch.save`` output.
"""

from __future__ import annotations

import http.server
import io
import os
import pickle
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_UNET

from raysegment.cli import main
from raysegment.errors import InputSpecError, StorageError, describe_error, describe_fatal, redacted_traceback
from raysegment.infer.stages import decode_batch
from raysegment.io.decoders import DecodeLimits
from raysegment.io.sources import list_inputs
from raysegment.output.root import OutputRoot
from raysegment.plugin.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from raysegment.plugin.spec import resolve_model
from raysegment.plugin.weights import WeightsError, read_state_dict
from raysegment.redaction import redact, redact_text, secret_values
from raysegment.runtime import describe_failure
from raysegment.train.run_folder import RunFolder
from raysegment.uri import filesystem, read_bytes, refuse_credentials

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzs3cr3t"  # an AWS-style secret: it holds / and +
#: What torch says of a refused file that must never reach a user.
UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "Re-running", "safe_globals", "trust")


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Every request answered 503 with an empty body, as S3 does under load for HEAD requests."""

    def _answer(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def unavailable() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a store that answers 503 Service Unavailable to everything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _s3_options(endpoint: str) -> dict:
    """S3 at ``endpoint``, with one retry (botocore would wait seconds for its default four)."""
    return {"key": "AKIAEXAMPLEKEY", "secret": SECRET, "endpoint_url": endpoint,
            "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAYSEGMENT_DEBUG", "RAY_ADDRESS"))}
    return subprocess.run([sys.executable, "-m", "raysegment.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=base | env, timeout=300)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# -- 1. credentials in URLs are refused, wherever a URL becomes a filesystem --------------------
@pytest.mark.parametrize(
    ("url", "where"),
    [
        (f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket/in/", "AWS_SECRET_ACCESS_KEY"),
        ("s3://AKIAEXAMPLEKEY:abcs3cr3t@bucket/in/", "AWS_ACCESS_KEY_ID"),
        ("https://user:hunter2s3cr3t@example.com/a.png", "presigned URL"),
        ("https://ghp_tokens3cr3t@example.com/a.png", "Authorization"),
        ("gs://ya29.tokens3cr3t@bucket/x.png", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("simplecache::s3://k:abcs3cr3t@bucket/x.png", "AWS_ACCESS_KEY_ID"),
        ("sftp://user:pws3cr3t@host/x.png", "storage_options"),
    ],
)
def test_a_url_with_credentials_is_refused_saying_where_they_go(url: str, where: str) -> None:
    with pytest.raises(InputSpecError) as info:
        filesystem(url, None)
    message = str(info.value)
    assert "credentials in a URL are refused" in message and where in message, message
    assert "s3cr3t" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    ["s3://bucket/versions/a@v2/x.png", "http://127.0.0.1:8080/a@b.png", "sftp://user@host/x.png",
     "abfs://container@account.dfs.core.windows.net/x.tif", "/data/user:pw@x/a.png", "memory://a/b.png"],
)
def test_names_that_are_no_credentials_pass(url: str) -> None:
    refuse_credentials(url)  # a path with @, a port, an sftp user, an Azure container


def test_every_entry_point_refuses_credentials_without_echoing_them(tmp_path: Path) -> None:
    url = f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket/x"
    calls = {
        "input": lambda: list_inputs(url),
        "item": lambda: read_bytes(f"{url}.png"),
        "output": lambda: OutputRoot(url),
        "storage": lambda: RunFolder(url, "run", {}),
        "checkpoint": lambda: load_checkpoint(f"{url}.pt"),
        "weights": lambda: read_state_dict(f"{url}.pth"),
        "save": lambda: save_checkpoint(f"{url}.pt", state_dict={}, plugin="p", plugin_version="1", params={},
                                        class_names=["a"]),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:  # InputSpecError or CheckpointError: one line either way
            call()
        assert "credentials in a URL are refused" in str(info.value), name
        assert "s3cr3t" not in str(info.value) and "AKIAEXAMPLEKEY" not in str(info.value), name


def test_the_cli_refuses_an_output_with_credentials_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["infer", str(tmp_path / "in"), f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket/out",
                                       "--model", "unet"])
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result.output)
    assert line.startswith("error: s3://bucket/out: credentials in a URL are refused"), line
    assert "AWS_SECRET_ACCESS_KEY" in line and SECRET not in result.output and "AKIAEXAMPLEKEY" not in result.output


# -- 2. a store that is unavailable: the operation, the URL, the status, what to do ---------------
def test_an_s3_read_that_gets_503_names_the_read_the_url_and_a_retry(unavailable: str) -> None:
    with pytest.raises(StorageError) as info:
        read_bytes("s3://bucket/in/x.png", _s3_options(unavailable))
    message = str(info.value)
    assert message.startswith("cannot read s3://bucket/in/x.png: HTTP 503 Service Unavailable (S3 "), message
    assert "retries" in message and message.endswith("retry later"), message
    assert "[Errno 16]" not in message and describe_error(info.value) == message  # the error row says the same


def test_a_raw_s3_listing_failure_is_worded_from_its_cause(unavailable: str) -> None:
    fs, path = filesystem("s3://bucket/in/", _s3_options(unavailable))
    with pytest.raises(OSError) as info:
        fs.find(path)
    assert str(info.value) == "[Errno 16] Service Unavailable"  # what s3fs says: no URL, no operation, "busy"
    line = describe_fatal(info.value, describe_failure(info.value))
    assert line.startswith("storage list failed: HTTP 503 Service Unavailable (S3 ListObjectsV2, after "), line
    assert "retry later" in line and "--resume" in line and "Errno" not in line, line
    assert describe_error(info.value).startswith("storage list failed: HTTP 503"), describe_error(info.value)
    # Inside a Ray task the same cause is named after the task, as runtime.describe_failure words it.
    ray_line = describe_fatal(info.value, f"Ray task Write(ShardedParquetSink) failed: OSError: {info.value}")
    assert ray_line.startswith("Ray task Write(ShardedParquetSink) failed: storage list failed: HTTP 503"), ray_line


def test_a_checkpoint_write_that_gets_503_names_the_write(unavailable: str) -> None:
    with pytest.raises(StorageError) as info:
        save_checkpoint("s3://bucket/runs/best.pt", state_dict={"w": torch.zeros(2)}, plugin="unet",
                        plugin_version="1", params={}, class_names=["a"], storage_options=_s3_options(unavailable))
    message = str(info.value)
    assert message.startswith("cannot write checkpoint s3://bucket/runs/best.pt: HTTP 503 Service Unavailable (S3 "), message
    assert message.endswith("retry later") and SECRET not in message, message


def test_an_http_item_that_gets_503_is_an_error_row_naming_the_read(unavailable: str) -> None:
    """The row's error text is redacted (the encode stage redacts the uri column the same way)."""
    uri = f"{unavailable}/img/x.png?X-Amz-Credential=AKIAEXAMPLEKEY&X-Amz-Signature=0123abcdSIG"
    spec = resolve_model("unet", SMALL_UNET)
    items = {"uri": np.array([uri], dtype=object), "index": np.arange(1), "shard": np.zeros(1, dtype=np.int32)}
    decoded = decode_batch(items, spec=spec, limits=DecodeLimits())
    assert list(decoded["status"]) == ["error"] and decoded["uri"][0] == uri
    error = decoded["error"][0]
    assert error == (f"cannot read {unavailable}/img/x.png?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED: "
                     "HTTP 503 Service Unavailable; the store is unavailable or throttling: retry later"), error


def test_the_cli_names_an_unavailable_checkpoint_and_hides_its_signature(unavailable: str, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    url = f"{unavailable}/ckpt/best.pt?X-Amz-Signature=0123abcdSIG"
    result = CliRunner().invoke(main, ["infer", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", url])
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result.output)
    assert line == (f"error: cannot read checkpoint {unavailable}/ckpt/best.pt?X-Amz-Signature=REDACTED: "
                    "HTTP 503 Service Unavailable; the store is unavailable or throttling: retry later "
                    "(rerun the same command with --resume to keep the work already done)"), line
    assert "0123abcdSIG" not in result.output


def test_the_cli_words_an_s3_listing_503_through_the_environment(unavailable: str, tmp_path: Path) -> None:
    env = {"AWS_ENDPOINT_URL": unavailable, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}
    proc = _cli("stats", "s3://bucket/images/", "--out", str(tmp_path / "s.json"), env=env)
    assert proc.returncode == 1, proc.stderr
    [line] = _error_lines(proc.stderr)
    assert "HTTP 503 Service Unavailable (S3 " in line and "retry later" in line and "--resume" in line, line
    assert "[Errno 16]" not in line and "Traceback" not in proc.stderr and SECRET not in proc.stderr


# -- 3. a checkpoint that does not load safely: never the advice to load it unsafely ---------------
class _RunsCode:
    """Unpickling this opens (creates) the file it names: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _noise(seed: int) -> bytes:
    """4 KiB of seeded noise that starts like neither a zip archive nor a pickle."""
    data = bytearray(random.Random(seed).randbytes(4096))
    data[0] = data[0] if data[0] not in (0x80, ord("P")) else 0x41
    return bytes(data)


def test_noise_is_never_taken_for_a_pickle(tmp_path: Path) -> None:
    """Noise makes the unpickler fail in many ways (IndexError, KeyError, ValueError, EOFError ...); every one
    of them is named by the file's first bytes. A CI run once drew noise that raised "pop from empty list"."""
    path = tmp_path / "noise.pt"
    for seed in range(200):
        path.write_bytes(_noise(seed))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(str(path))
        assert "it is not a PyTorch file" in str(info.value), (seed, str(info.value))


def _real_checkpoint(path: Path) -> bytes:
    save_checkpoint(str(path), state_dict={"w": torch.arange(4096.0)}, plugin="unet", plugin_version="1",
                    params={}, class_names=["background", "cell"])
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp, marker: _noise(0), "it is not a PyTorch file"),
        (lambda tmp, marker: b"", "the file is empty"),
        (lambda tmp, marker: pickle.dumps(_RunsCode(marker)), "plain Python pickle"),
        (lambda tmp, marker: pickle.dumps(_RunsCode(marker), protocol=2), "Python object io.open"),
        (lambda tmp, marker: _torch_bytes({"w": torch.zeros(1), "evil": _RunsCode(marker)}), "Python object io.open"),
        (lambda tmp, marker: _torch_bytes({"w": torch.zeros(1), "cls": torch.nn.Linear}), "torch.nn.modules.linear"),
        (lambda tmp, marker: _real_checkpoint(tmp / "real.pt")[:3000], "truncated or corrupt"),
        (lambda tmp, marker: _real_checkpoint(tmp / "real.pt")[:-16], "truncated or corrupt"),
    ],
    ids=["random", "empty", "pickle", "pickle-protocol-2", "torch-save-code", "torch-save-class", "truncated",
         "truncated-tail"],
)
def test_a_checkpoint_that_does_not_load_safely_says_what_it_is(make, reason: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    path.write_bytes(make(tmp_path, marker))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is not a raysegment/PyTorch checkpoint that loads safely "
                              "(weights_only): "), message
    assert reason in message and "never loads pickles that can run code" in message, message
    assert not any(advice in message for advice in UNSAFE_ADVICE) and "\n" not in message, message
    with pytest.raises(WeightsError) as weights:
        read_state_dict(str(path))
    assert str(weights.value).startswith("weights ") and reason in str(weights.value)
    assert not any(advice in str(weights.value) for advice in UNSAFE_ADVICE)
    assert not marker.exists()  # nothing in the file ran


def test_the_cli_refuses_a_code_running_checkpoint_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    (tmp_path / "evil.pt").write_bytes(_torch_bytes({"evil": _RunsCode(marker)}))
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["infer", str(tmp_path / "in"), str(tmp_path / "out"),
                                       "--checkpoint", str(tmp_path / "evil.pt")])
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result.output)
    assert "loads safely (weights_only)" in line and "never loads pickles" in line, line
    assert not any(advice in result.output for advice in UNSAFE_ADVICE) and not marker.exists()


# -- 4. secrets in tracebacks (RAYSEGMENT_DEBUG=1) and messages ---------------------------------
def test_the_debug_traceback_shows_no_secret_from_a_url_or_the_environment(unavailable: str, tmp_path: Path) -> None:
    """The HTTP library's own error carries the whole URL (signature, token): the traceback is redacted."""
    env_secret = "ENVsessionTOKENvalue0123456789"
    url = (f"{unavailable}/{env_secret}/best.pt?X-Amz-Signature=0123abcdSIG"
           "&X-Amz-Security-Token=FwoGZXIvTOKEN")
    (tmp_path / "in").mkdir()
    args = ("infer", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", url)
    env = {"AWS_SESSION_TOKEN": env_secret, "AWS_SECRET_ACCESS_KEY": SECRET}
    debug = _cli(*args, env=env | {"RAYSEGMENT_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert "ClientResponseError" in debug.stderr and "REDACTED" in debug.stderr  # the cause is shown, blanked
    plain = _cli(*args, env=env)
    assert plain.returncode == 1 and len(_error_lines(plain.stderr)) == 1, plain.stderr
    for out in (debug.stdout, debug.stderr, plain.stdout, plain.stderr):
        assert "0123abcdSIG" not in out and "FwoGZXIvTOKEN" not in out and env_secret not in out, out


def test_redacted_traceback_blanks_storage_option_and_environment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("PIP_KEYRING_PROVIDER", "subprocess")  # "KEYRING" is not the word KEY: not a secret
    try:
        raise RuntimeError(f"failed with {SECRET} and token tok-12345 at subprocess level")
    except RuntimeError as exc:
        text = redacted_traceback(exc, {"client_kwargs": {"token": "tok-12345"}})
    assert "Traceback" in text and SECRET not in text and "tok-12345" not in text
    assert "subprocess level" in text  # no false positive from a variable that only looks like one
    assert quote(SECRET, safe="") not in redact_text(f"url?x={quote(SECRET, safe='')}", secret_values())


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket/x.png", "s3://bucket/x.png"),  # the secret's / is no path
        ("zip://a.png::s3://k:abcs3cr3t@bucket/x.zip", "zip://a.png::s3://bucket/x.zip"),
        ("http://127.0.0.1:8080/a@b.png", "http://127.0.0.1:8080/a@b.png"),
    ],
)
def test_redact_handles_secrets_with_slashes_and_chained_urls(uri: str, expected: str) -> None:
    assert redact(uri) == expected
    assert redact_text(f"cannot read {uri}: HTTP 503") == f"cannot read {expected}: HTTP 503"
