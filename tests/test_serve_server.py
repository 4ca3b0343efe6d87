"""The policy server through openpi-client (unchanged) and raw websockets: round trip, bad
input, tokens, concurrency and fairness, disconnects, /healthz, graceful shutdown."""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from lingvla.serve.policy import Policy
from lingvla.serve.protocol import packb, unpackb
from lingvla.serve.server import ServerThread

client_module = pytest.importorskip("openpi_client.websocket_client_policy")
WebsocketClientPolicy = client_module.WebsocketClientPolicy
# openpi-client 0.1.2 opens its connection without a context manager, which websockets 17 flags.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(policy):
    with ServerThread(policy, max_message_bytes=200_000) as s:
        yield s


def observation(seed=0, **changes):
    rng = np.random.default_rng(seed)
    obs = {"images": {c: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                      for c in ("top", "left_wrist", "right_wrist")},
           "state": rng.uniform(-1, 1, 14).astype(np.float32), "prompt": "transfer the cube"}
    obs.update(changes)
    return obs


class SlowPolicy:
    """A stand-in model: sleeps, records the prompts in the order it served them."""

    def __init__(self, seconds):
        self.seconds, self.served = seconds, []
        self.metadata = {"policy": "slow"}

    def infer(self, obs, **kwargs):
        time.sleep(self.seconds)
        self.served.append(obs["prompt"])
        return {"actions": np.zeros((4, 2), np.float32)}


def raw_request(ws, payload):
    ws.send(payload)
    reply = ws.recv(timeout=30)
    return reply if isinstance(reply, str) else unpackb(reply)


def test_openpi_client_round_trip(server, policy):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert meta["action_dim"] == 14 and meta["action_horizon"] == 50 and meta["embodiment"] == "aloha"
    assert meta["server"]["max_message_bytes"] == 200_000
    first = client.infer(observation())
    second = client.infer(observation())
    for out in (first, second):
        assert out["actions"].shape == (50, 14) and out["actions"].dtype == np.float32
        assert np.isfinite(out["actions"]).all() and out["server_timing"]["infer_ms"] > 0
    assert "prev_total_ms" not in first["server_timing"] and second["server_timing"]["prev_total_ms"] > 0
    # Deterministic noise: the same seed gives what Policy.infer gives with that noise.
    seeded = client.infer(observation(noise_seed=5))["actions"]
    noise = torch.randn((1, 50, 32), generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(seeded, policy.infer(observation(), noise=noise)["actions"])
    # Real-time chunking inputs travel in the observation.
    prefix = seeded[25:]
    rtc = client.infer(observation(noise_seed=6, prefix_actions=prefix, prefix_delay=np.int64(3), rtc_method="inpaint"))
    np.testing.assert_array_equal(rtc["actions"][:3], prefix[:3])
    client._ws.close()


def test_bad_inputs_get_errors_and_the_connection_keeps_working(server):
    good = packb(observation(noise_seed=1))
    image = observation()["images"]["top"]
    cases = [
        (b"\xc1\x00garbage", "not valid msgpack"),
        ("hello", "text frame"),
        (packb([1, 2, 3]), "must be a msgpack map"),
        (packb({"state": np.zeros(14, np.float32)}), "missing ['images', 'prompt']"),
        (packb(observation(state=np.zeros(7, np.float32))), "state has 7 values"),
        (packb(observation(state=np.array(["a"] * 14))), "state must be numeric"),
        (packb(observation(state=np.full(14, np.nan, np.float32))), "NaN or inf"),
        (packb(observation(state=np.array([np.inf] + [0.0] * 13))), "NaN or inf at dims [0]"),
        (packb(observation(images={"top": image.astype(np.float32)})), "must be uint8"),
        (packb(observation(images={"top": image[..., 0]})), "HxWx3"),
        (packb(observation(images={"cam_nope": image})), "unknown camera 'cam_nope'"),
        (packb(observation(prompt=3)), "prompt must be a str"),
        (msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f4", b"shape": [1]}}),
         "needs 4 bytes"),
        (packb(observation(noise_seed=-1)), "noise_seed"),
        (packb(observation(prefix_actions=np.zeros((5, 3), np.float32))), "prefix_actions must have shape"),
        (packb(observation(prefix_actions=np.zeros((5, 14), np.float32), prefix_delay=9)), "prefix_delay"),
        (packb(observation(prefix_actions=np.zeros((5, 14), np.float32), rtc_method="magic")), "unknown RTC method"),
        (packb(observation(pad=np.zeros(300_000, np.uint8))), "exceeds the server's limit of 200000 bytes"),
    ]
    with connect(server.url) as ws:
        unpackb(ws.recv())
        for payload, words in cases:
            reply = raw_request(ws, payload)
            assert isinstance(reply, str) and words in reply, (words, reply)
            assert raw_request(ws, good)["actions"].shape == (50, 14)
    # The openpi client sees the error as an exception and its next call works.
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    with pytest.raises(RuntimeError, match="unknown camera"):
        client.infer(observation(images={"cam_nope": image}))
    assert client.infer(observation())["actions"].shape == (50, 14)
    client._ws.close()


def test_frames_far_over_the_limit_close_only_that_connection(server):
    with connect(server.url) as ws:
        unpackb(ws.recv())
        ws.send(b"\x00" * 900_000)  # over 4x the limit: not buffered, the connection closes (1009)
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=30)
        assert err.value.rcvd.code == 1009
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    assert client.infer(observation())["actions"].shape == (50, 14)
    client._ws.close()


def test_concurrent_clients_get_what_a_single_client_gets(server):
    seeds = [11, 12, 13]
    single = WebsocketClientPolicy("127.0.0.1", server.port)
    expected = {s: single.infer(observation(seed=s, noise_seed=s))["actions"] for s in seeds}
    single._ws.close()
    results, errors = {}, []

    def worker(i):
        try:
            client = WebsocketClientPolicy("127.0.0.1", server.port)
            for r in range(3):
                seed = seeds[(i + r) % 3]
                results[(i, r)] = (seed, client.infer(observation(seed=seed, noise_seed=seed))["actions"])
            client._ws.close()
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 9
    for seed, actions in results.values():
        np.testing.assert_array_equal(actions, expected[seed])


def test_requests_are_served_fifo_across_connections_and_healthz_stays_responsive():
    slow = SlowPolicy(0.25)
    with ServerThread(slow) as server:
        clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(3)]
        start = threading.Barrier(3)

        def worker(i):
            start.wait()
            for _ in range(3):
                clients[i].infer({"prompt": f"c{i}"})

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read().strip() == b"OK"
        assert time.perf_counter() - t0 < 0.15  # answered while a 0.25 s inference runs
        for t in threads:
            t.join(30)
        # FIFO over connections: once all three are queued they take turns (round robin).
        order = slow.served
        assert sorted(order) == sorted(["c0", "c1", "c2"] * 3)
        for i in range(len(order) - 2):
            window = order[i:i + 3]
            if all(order.count(c) - order[:i].count(c) > 0 for c in ("c0", "c1", "c2")):
                assert len(set(window)) == 3, order
        for c in clients:
            c._ws.close()


def test_client_leaving_mid_inference_harms_nothing():
    slow = SlowPolicy(0.4)
    with ServerThread(slow) as server:
        with connect(server.url) as running, connect(server.url) as queued:
            unpackb(running.recv())
            unpackb(queued.recv())
            running.send(packb({"prompt": "running"}))
            time.sleep(0.1)  # now inside infer
            queued.send(packb({"prompt": "queued"}))
            time.sleep(0.05)
            queued.close()  # leaves while waiting in the queue: skipped
            running.close()  # leaves while its request runs: the reply is dropped
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.infer({"prompt": "after"})["actions"].shape == (4, 2)
        assert slow.served == ["running", "after"]
        assert server.server.stats["dropped"] == 2
        client._ws.close()


def test_tokens(policy):
    with ServerThread(policy, token="s3cret") as server:
        for api_key, status in ((None, 401), ("wrong", 403)):
            with pytest.raises(InvalidStatus) as err:
                WebsocketClientPolicy("127.0.0.1", server.port, api_key=api_key)
            assert err.value.response.status_code == status
        with pytest.raises(InvalidStatus):
            connect(server.url, additional_headers={"Authorization": "Basic s3cret"})
        client = WebsocketClientPolicy("127.0.0.1", server.port, api_key="s3cret")
        assert client.get_server_metadata()["embodiment"] == "aloha"
        client._ws.close()
        with connect(server.url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert unpackb(ws.recv())["action_dim"] == 14
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200  # health checks need no token


def test_shutdown_finishes_the_request_in_flight():
    slow = SlowPolicy(0.4)
    server = ServerThread(slow).start()
    with connect(server.url) as ws, connect(server.url) as idle:
        unpackb(ws.recv())
        unpackb(idle.recv())
        ws.send(packb({"prompt": "in flight"}))
        time.sleep(0.1)
        server.stop()
        assert unpackb(ws.recv(timeout=10))["actions"].shape == (4, 2)
        for conn in (ws, idle):
            with pytest.raises(ConnectionClosed) as err:
                conn.recv(timeout=10)
            assert err.value.rcvd.code == 1001
    assert not server._thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2)


def test_cli_serve_exits_0_on_sigterm(tiny_checkpoint, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lingvla.cli", "serve", str(tiny_checkpoint), "--port", "0",
                                 "--threads", "1"], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        assert ready, "server did not start"
        info = json.loads(proc.stdout.readline())  # {"serving": ..., "port": ...} once listening
        assert info["serving"].startswith("ws://127.0.0.1:")
        with urllib.request.urlopen(info["healthz"], timeout=10) as r:
            assert r.read() == b"OK\n"
        client = WebsocketClientPolicy("127.0.0.1", info["port"])
        assert client.infer(observation())["actions"].shape == (50, 14)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(ConnectionClosed):
            client.infer(observation())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert "stopped" in log.read_text()


def test_broker_drives_real_time_chunking_through_the_server(server):
    from lingvla.serve.broker import ActionBroker, Execution

    class Recording:
        def __init__(self, client):
            self.client, self.calls = client, []

        def infer(self, obs):
            out = self.client.infer(obs)
            self.calls.append((obs, out["actions"]))
            return out

    client = WebsocketClientPolicy("127.0.0.1", server.port)
    remote = Recording(client)
    broker = ActionBroker(remote, Execution("rtc", execute_horizon=20, delay=4), asynchronous=True)
    actions = np.stack([broker.act(observation()) for _ in range(30)])
    broker.close()
    client._ws.close()
    assert broker.switches == [0, 24] and len(remote.calls) == 2
    (first_obs, first), (obs, second) = remote.calls
    assert "prefix_actions" not in first_obs
    np.testing.assert_array_equal(obs["prefix_actions"], first[20:])  # the plan from tick 20 on
    assert obs["prefix_delay"] == 4
    np.testing.assert_array_equal(second[:4], first[20:24])  # the server kept the committed actions
    np.testing.assert_array_equal(actions[:24], first[:24])
    np.testing.assert_array_equal(actions[24:], second[4:10])
