"""ActionBroker arithmetic on synthetic chunk sources (the model is not involved here)."""

import threading
import time

import numpy as np
import pytest

from lingvla.serve.broker import ActionBroker, Execution, boundary_jumps, ensemble_weights


class Source:
    """Chunk j (the j-th call) is `make(j, start_tick)`; records what the broker sent."""

    def __init__(self, make, sleep=0.0):
        self.make, self.sleep, self.calls = make, sleep, []
        self.thread_names = set()

    def __call__(self, obs, prefix_actions=None, prefix_delay=0):
        self.thread_names.add(threading.current_thread().name)
        time.sleep(self.sleep)
        j = len(self.calls)
        self.calls.append({"tick": obs["tick"], "prefix": None if prefix_actions is None else prefix_actions.copy(),
                           "delay": prefix_delay})
        return self.make(j, obs["tick"])


def drive(broker, ticks):
    return np.stack([broker.act({"tick": k}) for k in range(ticks)])


def test_plain_chunking_executes_chunks_back_to_back():
    src = Source(lambda j, k: np.full((6, 2), 10.0 * j) + np.arange(6)[:, None])
    out = drive(ActionBroker(src, Execution("chunk", execute_horizon=4)), 12)
    assert [c["tick"] for c in src.calls] == [0, 4, 8]
    expected = np.concatenate([np.full((4, 2), 10.0 * j) + np.arange(4)[:, None] for j in range(3)])
    np.testing.assert_array_equal(out, expected)


def test_ensembling_uses_acts_exact_weights():
    h, m = 4, 0.5
    src = Source(lambda j, k: np.full((h, 3), float(j)))  # chunk j (requested at tick j) is all j
    broker = ActionBroker(src, Execution("ensemble", execute_horizon=1, ensemble_decay=m))
    out = drive(broker, 10)
    np.testing.assert_allclose(ensemble_weights(3, m), np.exp(-m * np.arange(3)) / np.exp(-m * np.arange(3)).sum())
    for k in range(10):
        values = np.arange(max(0, k - h + 1), k + 1, dtype=np.float64)  # covering chunks, oldest first
        w = np.exp(-m * np.arange(len(values)))
        np.testing.assert_allclose(out[k], (w * values).sum() / w.sum(), rtol=1e-6)
    assert len(src.calls) == 10


def test_ensembling_smooths_boundaries_of_jumpy_chunks():
    rng = np.random.default_rng(0)
    offsets = rng.choice([-1.0, 1.0], size=100)
    # Every chunk follows the same smooth path but starts from its own random offset.
    make = lambda j, k: (np.sin((k + np.arange(8)) / 10.0) + offsets[j])[:, None].repeat(2, 1)  # noqa: E731
    plain = drive(ActionBroker(Source(make), Execution("chunk", execute_horizon=4)), 60)
    ensemble = Execution("ensemble", execute_horizon=1, ensemble_decay=0.0)
    ensembled = drive(ActionBroker(Source(make), ensemble), 60)
    plain_steps = np.abs(np.diff(plain[:, 0]))
    ens_steps = np.abs(np.diff(ensembled[8:, 0]))  # after the window has filled
    assert plain_steps.max() > 1.5
    assert ens_steps.max() < 0.35 * plain_steps.max()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_rtc_sends_the_plan_and_executes_committed_actions_during_the_delay(asynchronous):
    h, s, d = 10, 5, 3
    make = lambda j, k: np.full((h, 2), 100.0 * j) + np.arange(h)[:, None]  # noqa: E731  (ignores the prefix)
    src = Source(make, sleep=0.05 if asynchronous else 0.0)
    broker = ActionBroker(src, Execution("rtc", execute_horizon=s, delay=d), asynchronous=asynchronous)
    out = drive(broker, 22)
    broker.close()
    # Requests every s ticks; each carries the current chunk's remaining plan and d.
    assert [c["tick"] for c in src.calls] == [0, 5, 10, 15, 20]
    assert src.calls[0]["prefix"] is None
    for j in range(1, 4):
        call = src.calls[j]
        plan_start = 0 if j == 1 else src.calls[j - 1]["tick"]  # the chunk executing at the request
        np.testing.assert_array_equal(call["prefix"], make(j - 1, 0)[call["tick"] - plan_start:])
        assert call["delay"] == d and len(call["prefix"]) == h - s
        # The committed d actions are executed while the chunk is computed, then the new chunk from step d.
        k = call["tick"]
        np.testing.assert_array_equal(out[k:k + d], call["prefix"][:d])
        np.testing.assert_array_equal(out[k + d], make(j, k)[d])
    assert broker.switches == [0, 8, 13, 18]
    if asynchronous:
        assert any(name.startswith("lingvla-broker") for name in src.thread_names)
        assert broker.stalls == 3  # these ticks take no time, so every switch waits for its chunk
    else:
        assert broker.stalls == 0


def test_async_and_sync_execute_the_same_stream():
    make = lambda j, k: np.sin(j + np.arange(12) / 3.0)[:, None].repeat(3, 1)  # noqa: E731
    runs = []
    for asynchronous in (False, True):
        broker = ActionBroker(Source(make, sleep=0.002), Execution("chunk", execute_horizon=6, delay=4),
                              asynchronous=asynchronous)
        runs.append(drive(broker, 40))
        broker.close()
    np.testing.assert_array_equal(*runs)


def test_boundary_jumps_and_reset():
    make = lambda j, k: np.full((4, 1), float(j * j))  # noqa: E731
    broker = ActionBroker(Source(make), Execution("chunk", execute_horizon=4))
    drive(broker, 12)
    np.testing.assert_allclose(boundary_jumps(broker.actions, broker.switches), [1.0, 3.0])
    broker.reset()
    assert broker.tick == 0 and broker.actions == [] and broker.switches == []


def test_configuration_errors():
    src = Source(lambda j, k: np.zeros((10, 2)))
    with pytest.raises(ValueError, match="one request in flight"):
        Execution(execute_horizon=3, delay=4)
    with pytest.raises(ValueError, match="run out of actions"):
        ActionBroker(src, Execution(execute_horizon=8, delay=3)).act({"tick": 0})
    with pytest.raises(ValueError, match="unknown broker mode"):
        Execution(mode="average")
    with pytest.raises(ValueError, match="expected 4"):
        ActionBroker(src, Execution(execute_horizon=2), chunk_size=4).act({"tick": 0})


def test_an_execution_cannot_change_under_a_running_broker():
    from dataclasses import FrozenInstanceError

    from lingvla.serve.rtc import RTCConfig

    execution = Execution("rtc", execute_horizon=10, delay=2, rtc=RTCConfig("guidance"))
    with pytest.raises(FrozenInstanceError):
        execution.delay = 0
    with pytest.raises(FrozenInstanceError):
        execution.rtc.max_guidance = 1.0
    assert hash(execution) == hash(Execution("rtc", execute_horizon=10, delay=2, rtc=RTCConfig("guidance")))


@pytest.mark.parametrize("fields,named", [
    ({"delay": -1}, r"^delay must be in \[0, execute_horizon\].*got delay=-1"),
    ({"execute_horizon": 0}, r"^execute_horizon must be >= 1; got 0"),
    ({"execute_horizon": 2.5}, r"^execute_horizon must be an int"),
    ({"delay": True}, r"^delay must be an int"),
    ({"mode": "ensemble", "ensemble_decay": float("nan")}, r"^ensemble_decay must be a finite number"),
    ({"mode": "chunk", "rtc": object()}, r"^rtc \(an RTCConfig\) is for mode 'rtc'; got mode 'chunk'"),
])
def test_an_execution_names_its_bad_field(fields, named):
    with pytest.raises(ValueError, match=named):
        Execution(**fields)


def test_an_execution_resolves_its_horizon_from_the_chunk_size():
    assert Execution().resolve(50).execute_horizon == 50
    assert Execution("ensemble").resolve(50).execute_horizon == 1
    assert Execution("rtc", delay=5).resolve(50) == Execution("rtc", execute_horizon=25, delay=5)
    given = Execution("rtc", execute_horizon=10, delay=3)
    assert given.resolve(50) is given
    with pytest.raises(ValueError, match="delay must be in"):
        Execution("rtc", delay=30).resolve(50)  # half the chunk is less than the delay
    broker = ActionBroker(Source(lambda j, k: np.zeros((10, 2))), Execution("rtc", delay=2))
    broker.act({"tick": 0})
    assert broker.execution == Execution("rtc", execute_horizon=5, delay=2)


def test_async_requests_see_a_snapshot_of_the_observation():
    seen = []

    def source(obs, prefix_actions=None, prefix_delay=0):
        time.sleep(0.02)  # the robot moves on (and reuses its buffer) meanwhile
        seen.append(float(obs["image"][0]))
        return np.zeros((8, 1))

    broker = ActionBroker(source, Execution("chunk", execute_horizon=4, delay=2), asynchronous=True)
    buffer = {"image": np.zeros(1)}
    for k in range(8):
        buffer["image"][:] = k  # written in place, like a renderer's output array
        broker.act(buffer)
    broker.close()
    assert seen == [0.0, 4.0]


@pytest.mark.parametrize("mode,delay", [("chunk", 0), ("rtc", 3), ("ensemble", 0)])
def test_observations_are_needed_only_on_request_ticks(mode, delay):
    """needs_observation() says which ticks send the observation; the others may pass None (a
    simulator then renders no cameras), and the executed stream is the same."""
    make = lambda j, k: np.full((10, 2), 100.0 * j) + np.arange(10)[:, None]  # noqa: E731
    full_src, lazy_src = Source(make), Source(make)
    horizon = 1 if mode == "ensemble" else 5
    execution = Execution(mode, execute_horizon=horizon, delay=delay, ensemble_decay=0.3)
    full, lazy = ActionBroker(full_src, execution), ActionBroker(lazy_src, execution)
    needed, out = [], []
    for k in range(17):
        need = lazy.needs_observation()
        needed.append(need)
        out.append(lazy.act({"tick": k} if need else None))
    np.testing.assert_array_equal(np.stack(out), drive(full, 17))
    assert [k for k, need in enumerate(needed) if need] == [c["tick"] for c in full_src.calls]
    with pytest.raises(ValueError, match="needs the observation"):
        ActionBroker(Source(make), Execution(mode, execute_horizon=horizon)).act(None)
