"""The deployment files: the image (Dockerfile, .dockerignore), docker-compose.yml and
deploy/nginx.conf.

Docker does not run here, so the image is checked by reading its files and by running
the Python its build runs. nginx, where it is installed, runs deploy/nginx.conf for real
in front of real servers; only what Docker alone provides is replaced (its DNS, port 80).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bot.brain import EmbeddingCache
from tests.conftest import ROOT, Client, Servers
from tests.fakes import free_port


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", "", "\n".join(lines)).splitlines() if i.strip()]


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())


def test_the_image_trains_the_demo_bot_and_prepares_its_caches() -> None:
    """examples/*/models is not in git: an image built from a clean clone had no intent model,
    and `docker compose up` never became healthy. Every container also converted the
    language model and exported the classifier's graph again, for ~40 s, past the health
    check's budget."""
    env = " ".join(i for i in DOCKERFILE if i.startswith("ENV "))
    lm_cache = re.search(r"DESKMATE_LM_CACHE=(\S+)", env)
    nlu_cache = re.search(r"DESKMATE_NLU_CACHE=(\S+)", env)
    assert lm_cache and nlu_cache, "the caches' places are fixed in the image"
    data_dir = re.search(r"DESKMATE_DATA_DIR=(\S+)", env)
    assert data_dir
    for cache in (lm_cache, nlu_cache):  # a volume on the data directory would hide them
        assert not cache.group(1).startswith(data_dir.group(1) + "/")

    runs = [i for i in DOCKERFILE if i.startswith("RUN ")]
    prepare = next((i for i in runs if "deskmate train" in i), "")
    assert '--project "$DESKMATE_PROJECT"' in prepare
    assert "load_brain(from_env())" in prepare  # converts the LM, embeds the knowledge
    # ... as root, so the runtime user is given what was made (some files are made 0600)
    user = next(n for n, i in enumerate(DOCKERFILE) if i.startswith("USER "))
    assert DOCKERFILE.index(prepare) < user
    runtime_user = DOCKERFILE[user].split()[1]
    owned = re.search(r"chown -R (\S+) (.*)", prepare)
    assert owned and owned.group(1).split(":")[0] == runtime_user
    given = owned.group(2).replace('"', "").split()
    for path in (lm_cache.group(1), nlu_cache.group(1), "$DESKMATE_PROJECT/models"):
        assert any(path == g or path.startswith(g + "/") for g in given), path

    health = next(i for i in DOCKERFILE if i.startswith("HEALTHCHECK "))
    start_period = re.search(r"--start-period=(\d+)s", health)
    assert start_period and int(start_period.group(1)) >= 60


def test_the_image_installs_the_cpu_build_of_torch() -> None:
    torch = next(i for i in DOCKERFILE if i.startswith("RUN ") and "torch==" in i)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch
    install = next(n for n, i in enumerate(DOCKERFILE) if "pip install --no-cache-dir ." in i)
    assert DOCKERFILE.index(torch) < install  # `pip install .` then keeps it


def test_the_build_context_leaves_out_local_state() -> None:
    """Without a .dockerignore the image got the builder's .venv, var/ (an embedded Redis'
    data) and whatever models a local `make run` had trained."""
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "var", "examples/*/models"} <= patterns
    assert "**/__pycache__" in patterns


def test_the_image_warm_up_runs(tmp_path: Path, trained_tinybot: Path) -> None:
    """The Python the image's build runs to prepare its caches, run here on the tiny bot."""
    prepare = next(i for i in DOCKERFILE if "load_brain(from_env())" in i)
    code = re.search(r'python -c "([^"]+)"', prepare)
    assert code
    project = tmp_path / "bot"
    shutil.copytree(trained_tinybot, project)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DESKMATE_PROJECT": str(project),
           "DESKMATE_LM_BACKEND": "none"}  # the language model's conversion is tested in tests/lm
    done = subprocess.run([sys.executable, "-c", code.group(1)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cache = project / "models" / "embeddings.npz"
    assert cache.is_file() and stat.S_IMODE(cache.stat().st_mode) == 0o644


def test_the_embedding_cache_is_readable_by_other_users(tmp_path: Path) -> None:
    """It was written through mkstemp, private to its writer (0600): made at the image's
    build (root), it could not be read by the server's user, which embedded the
    knowledge base again at every start."""
    path = tmp_path / "models" / "embeddings.npz"
    cache = EmbeddingCache(lambda texts: np.ones((len(texts), 4), np.float32), path, "encoder-1")
    cache(["a question"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o640)  # an operator's choice is kept
    cache(["another question"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_compose_runs_the_image_behind_nginx() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    deskmate = services["deskmate"]
    assert deskmate["build"] == "."
    assert deskmate["environment"]["DESKMATE_TRUST_PROXY"] == "true"
    assert "ports" not in deskmate  # only nginx publishes one, so deskmate scales
    assert services["nginx"]["depends_on"]["deskmate"]["condition"] == "service_healthy"
    grace = int(deskmate["stop_grace_period"].removesuffix("s"))
    assert grace > 10  # DESKMATE_SHUTDOWN_GRACE's default, then closing the sockets
    # docs/security.md tells operators to set it: the place to do so is there to see
    assert re.search(r"^\s*# DESKMATE_ALLOWED_ORIGINS: ", text, re.MULTILINE)


# -- nginx ----------------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


@contextmanager
def nginx(tmp_path: Path, upstreams: list[int]) -> Iterator[int]:
    """deploy/nginx.conf in front of the servers on ``upstreams``; yields nginx's port."""
    assert NGINX is not None
    port = free_port()
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    # Docker's DNS and `resolve` (nginx >= 1.27.3) find the instances in Compose; here they
    # are listed. Port 80 becomes a free one; logs and temporary files go to tmp_path.
    text = re.sub(r"^\s*resolver .*;\n", "", text, flags=re.MULTILINE)
    servers = "".join(f"server 127.0.0.1:{p};\n        " for p in upstreams)
    assert "server deskmate:8080 resolve;" in text and "listen 80;" in text
    text = text.replace("server deskmate:8080 resolve;", servers)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    local = f"access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;"
    text = text.replace("http {", f"http {{\n    {local}\n", 1)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g",
                             f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"nginx exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not start")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@needs_nginx
async def test_pages_served_through_nginx_may_open_sockets(servers: Servers, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With DESKMATE_ALLOWED_ORIGINS set, /demo and /agent open sockets because their
    Origin names the Host they were served from. nginx passed `$host` (no port) and, in
    /ws/, neither Host nor X-Forwarded-For (a location that sets a header of its own drops
    the server's), so through Compose's :8080 both pages were refused with 403, and every
    customer counted against one address, nginx's, for the per-address limits."""
    server = await servers.start(allowed_origins=("https://shop.example",), trust_proxy=True)
    seen: list[Any] = []
    admit = server.app._admit

    def record(connection: Any, request: Any) -> Any:
        seen.append(request.headers)
        return admit(connection, request)

    monkeypatch.setattr(server.app, "_admit", record)
    with nginx(tmp_path, [server.port]) as port:
        for origin in (f"http://127.0.0.1:{port}", "https://shop.example"):
            async with connect(f"ws://127.0.0.1:{port}/ws/chat", origin=origin,  # type: ignore[arg-type]
                               open_timeout=10) as ws:
                await Client(ws).start()
        with pytest.raises(InvalidStatus) as refused:  # the allow-list still applies
            await connect(f"ws://127.0.0.1:{port}/ws/chat", origin="https://evil.example",  # type: ignore[arg-type]
                          open_timeout=10)
        assert refused.value.response.status_code == 403
    assert seen and all(h.get_all("Host") == [f"127.0.0.1:{port}"] for h in seen)
    assert all(h.get_all("X-Forwarded-For") == ["127.0.0.1"] for h in seen)  # what nginx saw


@needs_nginx
async def test_nginx_opens_sockets_on_an_instance_that_is_not_draining(servers: Servers,
                                                                      tmp_path: Path) -> None:
    """An instance shutting down refuses new sockets with 503; nginx tries the next one,
    so a customer who connects during a deploy is not turned away."""
    draining, serving = await servers.start(), await servers.start()
    draining.app.draining = True
    with nginx(tmp_path, [draining.port, serving.port]) as port:
        sockets = [await connect(f"ws://127.0.0.1:{port}/ws/chat", open_timeout=10) for _ in range(6)]
        try:
            for ws in sockets:
                await Client(ws).start()
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
