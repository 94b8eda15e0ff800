"""Hub publishing, with the real huggingface_hub client pointed at a local stand-in (HF_ENDPOINT).

The stand-in is a threaded http.server on 127.0.0.1 that implements the endpoints huggingface_hub
2.4.0 calls for whoami, create_repo and upload_folder: /api/whoami-v2, /api/repos/create,
/api/validate-yaml (README.md metadata), /api/models/{repo}/preupload/{rev} (answers "regular" for
every file, so content travels base64 in the commit and no LFS/Xet upload happens) and
/api/models/{repo}/commit/{rev} (ndjson). It records every request, so the tests can assert which
files arrived and that the token was sent in the Authorization header and nowhere else.
Nothing leaves the machine.

Runs that retry go through the entry point's `main` in this process (tests/entry.py), huggingface_hub's
endpoint pointed at the stand-in, and the back-off's sleeps recorded instead of slept (`in_process`): the
retry policy runs as it is (which failures are retried, how often, the delays asked for) without ~15 s of
waiting. The exit-code contract stays end to end in real processes: a training run whose upload is refused
(exit 4), `push` refused (exit 4), a pre-flight rejection (exit 2), a full train-evaluate-push (exit 0).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub import ModelCard

from saudial.publish.hub import RETRY_DELAYS_S
from tests.adapter_run import trained_adapter
from tests.conftest import RunEntry, base_env
from tests.entry import assert_one_line_error, run_in_process

TOKEN = "hf_saudialFAKEtoken0123456789abcdefXYZ"
REPO_ID = "tester/lfm2-saudial-test"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class StandIn:
    """What the fake Hub answers and what it received."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    # endpoint kind ('whoami', 'create', 'preupload', 'commit') -> statuses to answer, in order; the
    # last one repeats. Unset: success.
    faults: dict[str, list[int]] = field(default_factory=dict)
    role: str = "write"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, kind: str) -> int | None:
        with self.lock:
            statuses = self.faults.get(kind)
            if not statuses:
                return None
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            return None if status == 200 else status

    def of_kind(self, kind: str) -> list[Request]:
        return [r for r in self.requests if _kind(r.method, r.path) == kind]

    def files(self) -> dict[str, bytes]:
        """Path -> content of every file in the successful commits."""
        files: dict[str, bytes] = {}
        for request in self.of_kind("commit"):
            for line in request.body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return files


def _kind(method: str, path: str) -> str:
    path = path.split("?")[0]
    if path == "/api/whoami-v2":
        return "whoami"
    if path == "/api/repos/create":
        return "create"
    if path == "/api/validate-yaml":
        return "validate"
    if path.startswith("/api/models/") and "/preupload/" in path:
        return "preupload"
    if path.startswith("/api/models/") and "/commit/" in path:
        return "commit"
    if path.startswith("/api/models/") and "/tree/" in path:
        return "tree"
    return "other"


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status >= 400:
                self.send_header("X-Error-Message", payload.get("error", "error"))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            kind = _kind(self.command, self.path)
            status = state.fault(kind)
            with state.lock:
                state.requests.append(request)
            if status is not None:
                messages = {
                    401: "Invalid credentials",
                    403: "You don't have the rights to create a model under this namespace",
                }
                self._reply(status, {"error": messages.get(status, "Internal Error - We're working hard to fix this")})
                return
            if kind == "whoami":
                self._reply(
                    200,
                    {
                        "type": "user",
                        "name": "tester",
                        "orgs": [{"name": "saudial-org"}],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "ci", "role": state.role}},
                    },
                )
            elif kind == "create":
                payload = json.loads(body)
                self._reply(200, {"url": f"{state.url}/{payload['organization']}/{payload['name']}"})
            elif kind == "validate":
                self._reply(200, {"errors": [], "warnings": []})
            elif kind == "preupload":
                files = json.loads(body)["files"]
                self._reply(
                    200,
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                )
            elif kind == "tree":  # the repo's files (upload_folder's delete_patterns): none yet
                self._reply(200, [])
            elif kind == "commit":
                self._reply(200, {"commitUrl": f"{state.url}/{REPO_ID}/commit/{'a' * 40}", "commitOid": "a" * 40})
            else:
                self._reply(404, {"error": f"stand-in has no {self.command} {self.path}"})

        do_GET = do_POST = do_PUT = _handle

    return Handler


@pytest.fixture
def hub() -> Iterator[StandIn]:
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def hub_env(tiny_model: Path, data: Path, output_dir: Path, hub: StandIn, tmp: Path, **extra: str) -> dict[str, str]:
    env = base_env(
        tiny_model,
        data,
        output_dir,
        SAUDIAL_PUSH_TO_HUB="true",
        SAUDIAL_HUB_MODEL_ID=REPO_ID,
        HF_TOKEN=TOKEN,
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp / "hf-home"),  # no token saved by a login on this machine
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        SAUDIAL_EVAL="none",
        NO_PROXY="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",  # 2 shared cores: OpenMP threads spinning against each other are 10x slower
    )
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    env.update(extra)
    return env


@dataclass
class InProcess:
    """`run(env, *args)`: the entry point's main here, against `hub`; `slept`: the back-off's delays, in order."""

    hub: StandIn
    slept: list[float]

    def run(self, env: dict[str, str], *args: str) -> Any:
        with pytest.MonkeyPatch.context() as patch:
            self.hub_constants(patch, env)
            return run_in_process(env, *args)

    @staticmethod
    def hub_constants(patch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
        """huggingface_hub's settings that a process reads from `env` at import: set as `hub_env` sets them."""
        from huggingface_hub import constants

        patch.setattr(constants, "ENDPOINT", env["HF_ENDPOINT"])
        patch.setattr(constants, "HF_HUB_OFFLINE", env.get("HF_HUB_OFFLINE") == "1")
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture
def in_process(hub: StandIn, monkeypatch: pytest.MonkeyPatch) -> InProcess:
    from saudial.publish import hub as publish

    slept: list[float] = []
    monkeypatch.setattr(publish, "time", SimpleNamespace(sleep=slept.append))  # hub.py's only use of time
    return InProcess(hub, slept)


def assert_backoff(slept: list[float], delays: tuple[float, ...]) -> None:
    """The waits asked for: each delay of the policy, in order, plus up to 10% jitter."""
    assert len(slept) == len(delays), slept
    assert all(d <= s <= 1.1 * d for s, d in zip(slept, delays, strict=True)), slept


def assert_token_only_in_authorization(hub: StandIn, *texts: str) -> None:
    assert hub.requests, "the stand-in received nothing"
    for request in hub.requests:
        assert request.headers.get("authorization") == f"Bearer {TOKEN}", request.path
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert TOKEN not in json.dumps(others) + request.path
        assert TOKEN.encode() not in request.body
    for text in texts:
        assert TOKEN not in text


def files_text(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


@pytest.mark.slow
def test_train_evaluate_and_push(
    tiny_model: Path, workbook: Path, tmp_path: Path, hub: StandIn, run_entry: RunEntry
) -> None:
    out = tmp_path / "out"
    env = hub_env(
        tiny_model,
        workbook,
        out,
        hub,
        tmp_path,
        SAUDIAL_EVAL="full",
        SAUDIAL_MAX_EVAL_SAMPLES="4",
        SAUDIAL_MAX_NEW_TOKENS="8",
    )
    result = run_entry(env)
    assert result.returncode == 0, result.stderr[-3000:]

    kinds = [_kind(r.method, r.path) for r in hub.requests]
    assert kinds[0] == "whoami"  # the pre-flight check, before training
    assert {"create", "preupload", "commit"} <= set(kinds)
    create = json.loads(hub.of_kind("create")[0].body)
    assert (create["organization"], create["name"], create["visibility"]) == ("tester", "lfm2-saudial-test", "private")

    files = hub.files()
    expected = {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "run_manifest.json",
        "metrics.json",
        "eval_results.md",
        "README.md",
    }
    assert expected <= set(files), sorted(files)
    assert not [f for f in files if f.startswith(("logs", "checkpoint")) or f.endswith(".jsonl")]
    assert files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()

    card = ModelCard(files["README.md"].decode())
    meta: Any = card.data  # ModelCardData
    # A local base that is no published model: no Hub id to name in the metadata, and not this machine's path
    assert meta.base_model is None and tiny_model.name in card.text and str(tiny_model) not in str(card)
    assert meta.library_name == "peft"
    assert meta.pipeline_tag == "text-generation"
    assert meta.language == ["en", "ar"]
    metrics = {(r.dataset_config, r.metric_type): r.metric_value for r in meta.eval_results}
    saved = json.loads((out / "metrics.json").read_text())
    assert metrics[(None, "chrf")] == saved["evaluation"]["scores"]["adapter"]["overall"]["chrf++"]
    assert (None, "bleu") in metrics
    text = card.text
    assert "| Dialect | n | chrF++ base | chrF++ adapter" in text  # the evaluation table
    assert '"learning_rate"' in text and "transformers" in text  # configuration and versions
    assert "PeftModel.from_pretrained" in text and "### Response:" in text  # usage snippet
    # PEFT's adapter_config.json names the local base by its path; the Hub's copy by its folder's name alone
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == tiny_model.name

    assert_token_only_in_authorization(hub, result.stdout, result.stderr, files_text(out))


@pytest.mark.slow
def test_forbidden_upload_after_training_exits_4_and_keeps_the_adapter(
    tiny_model: Path, workbook: Path, tmp_path: Path, hub: StandIn, run_entry: RunEntry
) -> None:
    out = tmp_path / "out"
    hub.faults["commit"] = [403]
    result = run_entry(hub_env(tiny_model, workbook, out, hub, tmp_path))
    assert result.returncode == 4, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: upload to")
    assert "403 Forbidden" in error and "write access" in error
    assert f"retry the upload with: saudial push --output-dir {out}" in error and "--hub-model-id" not in error
    assert "Traceback" not in result.stderr
    assert len(hub.of_kind("commit")) == 1  # a 403 is not retried
    assert (out / "adapter_model.safetensors").is_file() and (out / "run_manifest.json").is_file()
    assert_token_only_in_authorization(hub, result.stdout, result.stderr, files_text(out))


@pytest.fixture
def trained(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_adapter(tiny_model, workbook, tmp_path_factory)


def push_env(trained: Path, hub: StandIn, tmp: Path) -> tuple[dict[str, str], Path]:
    out = tmp / "run"
    shutil.copytree(trained, out)
    env = hub_env(Path("unused"), Path("unused"), out, hub, tmp)
    return env, out


@pytest.mark.slow
def test_push_command_uploads_a_finished_run(
    trained: Path, tmp_path: Path, hub: StandIn, in_process: InProcess
) -> None:
    env, out = push_env(trained, hub, tmp_path)
    (out / "gguf").mkdir()  # what `saudial export` leaves beside the adapter (its contents do not matter to push)
    (out / "gguf" / "adapter-f32.gguf").write_bytes(b"GGUF")
    (out / "gguf" / "Modelfile").write_text("FROM x\n")
    env["SAUDIAL_HUB_PRIVATE"] = "false"
    # Trained from a local copy of a published model (model/base_model.py records which one).
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "base_model": {"name": "LiquidAI/LFM2-1.2B"}}))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "README.md"}
    hub.faults["commit"] = [500, 200]  # one server error, then success: retried
    result = in_process.run(env, "push", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.read_bytes() for p in before} == before, "push changes no file of the run but its card"
    listed = re.search(r"uploading (.*) to http", result.stderr)
    assert listed is not None and set(listed.group(1).split(", ")) == set(hub.files()), "the line lists what is sent"
    assert {"gguf/adapter-f32.gguf", "gguf/Modelfile"} <= set(hub.files())
    assert json.loads(hub.of_kind("create")[0].body)["visibility"] == "public"
    assert len(hub.of_kind("commit")) == 2
    assert "retrying" in result.stderr
    assert_backoff(in_process.slept, RETRY_DELAYS_S[:1])
    files = hub.files()
    assert {"adapter_model.safetensors", "README.md", "run_manifest.json", "metrics.json"} <= set(files)
    assert "Not evaluated in this run" in files["README.md"].decode()
    # What goes to the Hub names no path of this machine: the base by its published name, PEFT reading it so
    from peft import LoraConfig

    local_config = json.loads((out / "adapter_config.json").read_text())
    assert Path(local_config["base_model_name_or_path"]).is_absolute()
    hub_config = json.loads(files["adapter_config.json"])
    assert hub_config == {**local_config, "base_model_name_or_path": "LiquidAI/LFM2-1.2B"}
    copy = tmp_path / "from-the-hub"
    copy.mkdir()
    (copy / "adapter_config.json").write_bytes(files["adapter_config.json"])
    assert LoraConfig.from_pretrained(str(copy)).base_model_name_or_path == "LiquidAI/LFM2-1.2B"
    local_manifest, hub_manifest = (
        json.loads((out / "run_manifest.json").read_text()),
        json.loads(files["run_manifest.json"]),
    )
    for key in ("data", "output_dir"):  # the run was trained in another folder (the shared run's)
        local = Path(local_manifest["config"][key])
        assert local.is_absolute() and hub_manifest["config"][key] == local.name
    assert hub_manifest["versions"] == local_manifest["versions"]
    assert not [v for v in json_strings(hub_manifest) if Path(v).is_absolute()]
    assert str(tmp_path.parent) not in "".join(f.decode(errors="replace") for f in files.values())
    assert "the Hub's adapter_config.json, run_manifest.json name no path of this machine" in result.stderr
    assert_token_only_in_authorization(hub, result.stdout, result.stderr, files_text(out))


def json_strings(value: Any) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in json_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in json_strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("create", 401, "401 Unauthorized: HF_TOKEN is invalid or expired"),
        ("create", 403, "403 Forbidden: HF_TOKEN has no write access"),
        ("commit", 500, "still failing after 3 retries"),
    ],
)
def test_push_failures_exit_4_with_the_retry_command(
    trained: Path,
    tmp_path: Path,
    hub: StandIn,
    run_entry: RunEntry,
    in_process: InProcess,
    kind: str,
    status: int,
    expected: str,
) -> None:
    """401 as a real `push` process; 403 and 500 (retried: the back-off recorded, not slept) in this process."""
    env, out = push_env(trained, hub, tmp_path)
    hub.faults[kind] = [status]
    result = (run_entry if status == 401 else in_process.run)(env, "push", "--output-dir", str(out))
    assert result.returncode == 4, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert expected in error, error
    assert error.endswith(f"retry the upload with: saudial push --output-dir {out} --hub-model-id {REPO_ID}"), error
    assert "Traceback" not in result.stderr
    attempts = len(hub.of_kind(kind))
    assert attempts == (4 if status == 500 else 1)  # 5xx: 1 try + 3 retries; 401/403: no retry
    if status != 401:
        assert_backoff(in_process.slept, RETRY_DELAYS_S if status == 500 else ())
    assert (out / "adapter_model.safetensors").is_file()
    assert_token_only_in_authorization(hub, result.stdout, result.stderr)


@pytest.mark.slow
def test_the_printed_retry_command_works_as_printed(
    trained: Path, tmp_path: Path, hub: StandIn, run_entry: RunEntry
) -> None:
    """A run trained without a Hub repo, pushed with --hub-model-id: the failure's retry command names the repo,
    and runs as printed (was: it left the flag out, and that command then failed with exit 2). Real processes."""
    env, out = push_env(trained, hub, tmp_path)
    for key in ("SAUDIAL_PUSH_TO_HUB", "SAUDIAL_HUB_MODEL_ID"):
        env.pop(key)
    hub.faults["create"] = [403]
    failed = run_entry(env, "push", "--output-dir", str(out), "--hub-model-id", REPO_ID, "--hub-private", "false")
    assert failed.returncode == 4, failed.stderr[-3000:]
    retry = shlex.split(failed.stderr.strip().splitlines()[-1].split("retry the upload with: ")[1])
    assert retry == ["saudial", "push", "--output-dir", str(out), "--hub-model-id", REPO_ID, "--hub-private", "false"]
    hub.faults.clear()
    done = run_entry(env, *retry[1:])  # `saudial` is this entry point
    assert done.returncode == 0, done.stderr[-3000:]
    created = json.loads(hub.of_kind("create")[-1].body)
    assert f"{created['organization']}/{created['name']}" == REPO_ID and created["visibility"] == "public"
    assert_token_only_in_authorization(hub, failed.stderr, done.stdout, done.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"HF_TOKEN": "<unset>"}, "no Hugging Face token: set HF_TOKEN to a token with write access"),
        ({"HF_HUB_OFFLINE": "1"}, "cannot upload while HF_HUB_OFFLINE is set: unset it and run `saudial push"),
        ({"SAUDIAL_HUB_MODEL_ID": "<unset>"}, "push needs the Hub repo: pass --hub-model-id owner/name (or set"),
    ],
)
def test_push_without_token_repo_or_hub_is_a_settings_error(
    trained: Path, tmp_path: Path, hub: StandIn, in_process: InProcess, extra: dict[str, str], expected: str
) -> None:
    """Settings that no retry can fix: exit 2 (README, Exit codes), as before training; nothing sent to the Hub.
    No token was exit 4; no repo id named SAUDIAL_PUSH_TO_HUB, which `push` does not read."""
    env, out = push_env(trained, hub, tmp_path)
    env.pop("SAUDIAL_PUSH_TO_HUB")
    for key, value in extra.items():
        if value == "<unset>":
            env.pop(key)
        else:
            env[key] = value
    result = in_process.run(env, "push", "--output-dir", str(out))
    assert_one_line_error(result, expected, code=2)
    assert "SAUDIAL_PUSH_TO_HUB" not in result.stderr and not hub.requests


def test_push_without_a_token_exits_2_as_a_process(tmp_path: Path, run_entry: RunEntry, hub: StandIn) -> None:
    """The same refusal end to end, on an adapter folder (push reads no model)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    env = hub_env(Path("unused"), Path("unused"), out, hub, tmp_path)
    env.pop("HF_TOKEN")
    result = run_entry(env, "push", "--output-dir", str(out))
    line = assert_one_line_error(result, "no Hugging Face token: set HF_TOKEN", code=2)
    assert line.endswith(f"and run `saudial push --output-dir {out} --hub-model-id {REPO_ID}`"), line
    assert not hub.requests


# --- pre-flight: exit 2 before any model is loaded ----------------------------------------------------


def preflight_run(
    run: Callable[..., Any], tiny_model: Path, workbook: Path, tmp_path: Path, hub: StandIn, **extra: str
) -> Any:
    env = hub_env(tiny_model, workbook, tmp_path / "out", hub, tmp_path, **extra)
    for key, value in extra.items():
        if value == "<unset>":
            env.pop(key)
    return run(env)


@pytest.mark.parametrize(
    ("extra", "role", "expected"),
    [
        ({"HF_TOKEN": "<unset>"}, "write", "needs a Hugging Face token with write access: set HF_TOKEN"),
        ({"SAUDIAL_HUB_MODEL_ID": "no-slash"}, "write", "SAUDIAL_HUB_MODEL_ID='no-slash' is invalid"),
        ({"SAUDIAL_HUB_MODEL_ID": "tester/bad--name"}, "write", "is not a valid Hub repo id"),
        ({"SAUDIAL_HUB_MODEL_ID": "someone-else/x"}, "write", "the token belongs to 'tester'"),
        ({}, "read", "read-only token"),
        ({"HF_HUB_OFFLINE": "1"}, "write", "cannot upload while HF_HUB_OFFLINE is set"),
    ],
)
def test_preflight_stops_before_training(
    in_process: InProcess,
    tiny_model: Path,
    workbook: Path,
    tmp_path: Path,
    hub: StandIn,
    extra: dict[str, str],
    role: str,
    expected: str,
) -> None:
    hub.role = role
    result = preflight_run(in_process.run, tiny_model, workbook, tmp_path, hub, **extra)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr.strip().splitlines()[-1]
    assert "loading" not in result.stderr  # stopped before the model loads
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.slow
def test_preflight_rejected_token(
    run_entry: RunEntry, tiny_model: Path, workbook: Path, tmp_path: Path, hub: StandIn
) -> None:
    """A real process: the pre-flight's exit 2 end to end."""
    hub.faults["whoami"] = [401]
    result = preflight_run(run_entry, tiny_model, workbook, tmp_path, hub)
    assert result.returncode == 2
    assert "HF_TOKEN was rejected" in result.stderr and "401" in result.stderr
    assert [_kind(r.method, r.path) for r in hub.requests] == ["whoami"]
    assert_token_only_in_authorization(hub, result.stdout, result.stderr)


def test_preflight_unreachable_hub(in_process: InProcess, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    closed = StandIn(url="http://127.0.0.1:9")  # discard port: connection refused
    result = preflight_run(in_process.run, tiny_model, workbook, tmp_path, closed)
    assert result.returncode == 2
    assert "cannot reach http://127.0.0.1:9" in result.stderr
    assert_backoff(in_process.slept, RETRY_DELAYS_S[:1])  # a connection error is retried once before training


@pytest.mark.slow
def test_checkpoint_upload_never_sends_the_trainers_pickle(
    trained: Path, tmp_path: Path, hub: StandIn, in_process: InProcess
) -> None:
    """hub_strategy=checkpoint uploads a checkpoint without training_args.bin (a pickle: loading one runs code)."""
    from saudial.config.settings import Settings
    from saudial.publish.hub import upload_checkpoint

    checkpoint = trained / "checkpoint-4"
    assert (checkpoint / "training_args.bin").is_file()  # the Trainer's, in its checkpoint
    env = hub_env(Path("unused"), Path("unused"), tmp_path / "out", hub, tmp_path)
    settings = Settings.model_validate({"push_to_hub": True, "hub_model_id": REPO_ID})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", TOKEN)
        in_process.hub_constants(patch, env)
        assert upload_checkpoint(settings, checkpoint)
    files = hub.files()
    assert {"last-checkpoint/adapter_model.safetensors", "last-checkpoint/saudial_checkpoint.json"} <= set(files)
    assert "last-checkpoint/optimizer.pt" in files and not [f for f in files if f.endswith("training_args.bin")]
