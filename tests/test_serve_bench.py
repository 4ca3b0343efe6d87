"""`lingvla bench smoothness` and `lingvla bench serve` run end to end and print their figures."""

import json

import pytest
import torch

from lingvla.cli import main


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_bench_smoothness_writes_a_plot_and_rtc_wins(tmp_path, capsys):
    out = tmp_path / "smooth.png"
    assert main(["bench", "smoothness", "--ticks", "60", "--ensemble-horizon", "5", "--threads", "1",
                 "--out", str(out)]) == 0
    runs = {r["run"]: r for r in records(capsys) if "run" in r}
    assert set(runs) == {"chunk_sync", "chunk_async", "ensemble", "rtc_guidance", "rtc_inpaint"}
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert runs["chunk_async"]["switches"] == 2 and runs["chunk_async"]["chunks"] == 3
    for method in ("rtc_guidance", "rtc_inpaint"):
        assert runs[method]["jump_mean"] < 0.25 * runs["chunk_async"]["jump_mean"]
        assert runs[method]["jump_max"] < 0.25 * runs["chunk_sync"]["jump_max"]


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_bench_serve_reports_percentiles_for_both_paths(capsys):
    pytest.importorskip("openpi_client")
    assert main(["bench", "serve", "--image-size", "56", "--repeats", "4", "--warmup", "1", "--threads", "1"]) == 0
    paths = {r["path"]: r for r in records(capsys)}
    assert set(paths) == {"policy.infer", "server"}
    for r in paths.values():
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert paths["server"]["server_infer_p50_ms"] > 0 and paths["server"]["request_bytes"] > 3 * 56 * 56 * 3
