"""`reprise route` in front of two stand-ins for vLLM pods (tests/fake_vllm.py):
vLLM's map encoding, 32-byte hashes of each pod's own scheme, an empty topic and a
replay socket. A prefix a pod published without ever being routed is routed to it,
and a batch it left out of its PUB stream (only in replay) is recovered.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = os.environ.get("REPRISE_BIN", str(ROOT / "target" / "release" / "reprise"))


def _start(cmd, pattern):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    log = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    for line in proc.stdout:
        m = re.search(pattern, line)
        if m:
            return proc, m
    proc.kill()
    raise AssertionError(f"{cmd[0]} printed no ready line:\n" + "".join(log))


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, dict(r.headers), r.read()


@pytest.fixture(scope="module")
def pods():
    started = []
    try:
        for seed in (11, 22):
            proc, m = _start([sys.executable, str(ROOT / "tests" / "fake_vllm.py"), "--seed", str(seed)],
                             r"http=(\d+) events=(\d+) replay=(\d+)")
            started.append((proc, {"http": m.group(1), "events": m.group(2), "replay": m.group(3)}))
        yield [p for _, p in started]
    finally:
        for proc, _ in started:
            _stop(proc)


@pytest.fixture(scope="module")
def router(pods):
    assert os.path.isfile(BINARY), f"{BINARY} is missing; run cargo build --release first"
    args = [BINARY, "route", "--port", "0"]
    for p in pods:
        args += ["--worker", f"http://127.0.0.1:{p['http']},events=tcp://127.0.0.1:{p['events']},"
                             f"replay=tcp://127.0.0.1:{p['replay']}"]
    proc, m = _start(args, r" on (http://\S+)")
    try:
        yield m.group(1)
    finally:
        _stop(proc)


def _tokens(router, text):
    _, _, body = _http("POST", router + "/tokenize", {"prompt": text})
    return json.loads(body)["tokens"]


def _engine_blocks(router, worker):
    _, _, body = _http("GET", router + "/metrics")
    m = re.search(rf'^reprise:worker_engine_blocks{{worker="{worker}"}} (\S+)$', body.decode(), re.M)
    return float(m.group(1))


def _wait(cond, what, within=10.0):
    deadline = time.time() + within
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _route(router, text):
    body = {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": text, "max_tokens": 1}
    status, headers, _ = _http("POST", router + "/v1/completions", body)
    assert status == 200
    return int(headers["x-reprise-worker"]), body


def _text(tag):
    words = "river lantern copper meadow violet harbor quartz falcon cedar ember glacier".split()
    return tag + ". " + " ".join(words[(i * 7) % len(words)] for i in range(70))


def test_a_prefix_published_by_a_pod_is_routed_to_it(pods, router):
    text = _text("published by pod one")
    ids = _tokens(router, text)
    _http("POST", f"http://127.0.0.1:{pods[1]['http']}/admin/store", {"token_ids": ids, "live": True})
    _wait(lambda: _engine_blocks(router, 1) >= len(ids) // 16, "pod 1's blocks in the index")
    for i in range(3):
        worker, body = _route(router, text + f" variant {i}")
        assert worker == 1
    # The body reached the pod unchanged.
    _, _, served = _http("GET", f"http://127.0.0.1:{pods[1]['http']}/admin/requests")
    assert json.loads(json.loads(served)[-1]) == body


def test_a_batch_only_in_replay_is_recovered(pods, router):
    pod = f"http://127.0.0.1:{pods[0]['http']}"
    hidden = _text("left out of the live stream")
    visible = _text("sent live afterwards")
    hidden_ids, visible_ids = _tokens(router, hidden), _tokens(router, visible)
    before = _engine_blocks(router, 0)
    _http("POST", pod + "/admin/store", {"token_ids": hidden_ids, "live": False})
    _http("POST", pod + "/admin/store", {"token_ids": visible_ids, "live": True})
    want = before + len(hidden_ids) // 16 + len(visible_ids) // 16
    _wait(lambda: _engine_blocks(router, 0) >= want, "the gap replayed")
    worker, _ = _route(router, hidden + " tail")
    assert worker == 0
