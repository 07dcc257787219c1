"""The bench's peer mode (nin_keras.peer), with fake peer commands: CI needs no PyTorch."""

import json
import os
import sys
import textwrap
import time

import pytest

from nin_keras import bench, peer
from nin_keras.errors import ConfigError, DataError

FAKE_PEER = textwrap.dedent("""
    import json, sys
    args = sys.argv[1:]
    value = dict(zip(args[::2], args[1::2]))
    with open(value["--network"]) as f:
        network = json.load(f)
    with open({log!r}, "a") as f:
        f.write(json.dumps({{"argv": args, "network": network}}) + "\\n")
    print("peer warming up ...")         # noise before the protocol's last line
    print(json.dumps({{"images_per_sec": {rate}, "precision": value["--precision"]}}))
""")


def write_peer(tmp_path, rate=500.0, body=None):
    """A peer command (a Python script) that logs what it was given and reports ``rate`` images/s."""
    log = tmp_path / "peer_log.jsonl"
    script = tmp_path / "fake_peer.py"
    script.write_text(body if body is not None else FAKE_PEER.format(log=str(log), rate=rate))
    return f"{sys.executable} {script}", log


def parse(argv):
    return bench.build_parser().parse_args(argv)


@pytest.mark.parametrize("requested, flags, cap, expected", [
    ("auto", {"avx2", "avx512f", "avx512_bf16"}, None, ["float32", "bfloat16"]),
    ("auto", {"avx2", "amx_bf16"}, None, ["float32", "bfloat16"]),
    ("auto", {"avx2", "fma"}, None, ["float32"]),
    ("auto", {"avx2", "avx512_bf16"}, "AVX2", ["float32"]),  # capped like an ordinary CPU
    ("auto", {"avx2", "avx512_bf16"}, "AVX512_CORE", ["float32"]),  # like an AVX-512 CPU without BF16
    ("auto", {"avx2", "amx_bf16"}, "AVX512_CORE_BF16", ["float32", "bfloat16"]),
    ("bfloat16", {"avx2"}, None, ["bfloat16"]),  # asked for explicitly
])
def test_peer_precisions_follow_the_cpu_and_the_cap(requested, flags, cap, expected, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert peer.peer_precisions(requested, cap, flags) == expected


def test_peer_refuses_float16_in_one_line():
    with pytest.raises(ConfigError, match="Received: --precision float16"):
        peer.peer_precisions("float16")


def test_rounds_alternate_which_side_goes_first_and_the_peer_gets_the_protocol(tmp_path, monkeypatch):
    command, log = write_peer(tmp_path, rate=400.0)
    calls = []

    def fake_ours(cmd, timeout, json_path=None):
        if json_path:  # nin_keras' side: a bench child, stood in for
            calls.append("nin_keras")
            return {"images_per_sec": 600.0, "end_to_end": 550.0, "achieved_fraction_of_matmul": 0.3}
        calls.append("peer")
        return real_run_child(cmd, timeout)

    real_run_child = peer.run_child
    monkeypatch.setattr(peer, "run_child", fake_ours)
    args = parse(["--preset", "tiny", "--steps", "3", "--rounds", "3", "--precision", "float32", "--peer", command])
    results = peer.run_peer_comparison(args, print_fn=lambda *a, **k: None)
    assert calls == ["nin_keras", "peer", "peer", "nin_keras", "nin_keras", "peer"]
    row = results["precisions"]["float32"]
    assert row["nin_keras"]["median"] == 600.0 and row["peer"]["median"] == 400.0
    assert row["ratio"] == pytest.approx(1.5)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 3
    argv = dict(zip(entries[0]["argv"][::2], entries[0]["argv"][1::2]))
    assert argv["--precision"] == "float32" and argv["--steps"] == "3" and argv["--batch-size"] == "128"
    assert float(argv["--learning-rate"]) == 0.003  # the tiny preset's
    assert entries[0]["network"]["blocks"] == [{"filters": 16, "kernel_size": 5, "pool": "max"},
                                               {"filters": 32, "kernel_size": 3, "pool": "max"}]
    assert row["nin_keras_end_to_end"]["median"] == 550.0
    assert "1.50x" in peer.format_peer(results)


@pytest.mark.parametrize("body, message", [
    ("import sys; print('Traceback ...'); print('RuntimeError: no torch', file=sys.stderr); sys.exit(1)",
     "RuntimeError: no torch"),
    ("print('done')", "no JSON line with images_per_sec"),
    ("print('{\"images_per_sec\": \"fast\"}')", "no JSON line with images_per_sec"),
])
def test_a_failing_peer_is_a_row_and_a_one_line_error(tmp_path, capsys, body, message):
    command, _ = write_peer(tmp_path, body=body)
    result = peer.run_child(command.split(), timeout=60)
    assert message in result["error"]
    summary = peer.summarize([{"images_per_sec": 600.0}], [result])
    assert "ratio" not in summary and message in summary["peer"]["error"]


def test_rounds_are_also_compared_pair_by_pair():
    """The host slowed down between rounds: the ratio of medians mixes rounds, each round's own ratio does not."""
    ours = [{"images_per_sec": 100.0}, {"images_per_sec": 200.0}, {"error": "killed"}, {"images_per_sec": 300.0}]
    theirs = [{"images_per_sec": 100.0}, {"images_per_sec": 100.0}, {"images_per_sec": 50.0},
              {"images_per_sec": 600.0}]
    summary = peer.summarize(ours, theirs)
    assert summary["ratio"] == pytest.approx(200.0 / 100.0)  # medians 200 and 100
    assert summary["paired_ratio"]["runs"] == pytest.approx([1.0, 2.0, 0.5])  # the failed round left out
    assert summary["paired_ratio"]["median"] == pytest.approx(1.0)
    table = peer.format_peer({"peer": "p", "preset": "tiny", "batch_size": 128, "steps": 3, "rounds": 4,
                              "precisions": {"float32": summary}})
    assert "2.00x" in table and "1.00x (0.50-2.00)" in table
    assert "paired_ratio" not in peer.summarize(ours[2:3], theirs[2:3])


def test_a_missing_peer_program_is_an_error_not_a_crash():
    assert "cannot run" in peer.run_child(["/nonexistent/python", "x.py"], timeout=10)["error"]


@pytest.mark.slow
def test_bench_peer_mode_end_to_end_with_a_fake_peer(tmp_path, capsys):
    """The real command: nin_keras' side is a real bench child; the peer a script."""
    command, log = write_peer(tmp_path, rate=250.0)
    out_json = tmp_path / "peer.json"
    code = bench.main(["--preset", "tiny", "--steps", "2", "--rounds", "2", "--precision", "float32",
                       "--peer", command, "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    assert "nin_keras vs peer" in out and "float32" in out
    results = json.loads(out_json.read_text())["precisions"]["float32"]
    assert results["nin_keras"]["failed"] == 0 and len(results["nin_keras"]["runs"]) == 2
    assert results["peer"]["runs"] == [250.0, 250.0]
    assert results["ratio"] == pytest.approx(results["nin_keras"]["median"] / 250.0)
    assert 0 < results["nin_keras_fraction_of_float32_ceiling"] < 1
    assert len(log.read_text().splitlines()) == 2


def test_bench_peer_mode_fails_in_one_line_when_every_peer_run_fails(tmp_path, capsys, monkeypatch):
    command, _ = write_peer(tmp_path, body="import sys; sys.exit('peer: torch is not installed')")
    monkeypatch.setattr(peer, "ours_command", lambda *a: [sys.executable, "-c", "pass"])
    code = bench.main(["--preset", "tiny", "--steps", "2", "--rounds", "1", "--precision", "float32",
                       "--peer", command])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error:") and "torch is not installed" in err


def test_nin_keras_side_gets_the_settings_asked_for_with_the_round_precision():
    """--peer with --no-fused-batch-norm (or --xla, threads...) must measure nin_keras with them."""
    args = parse(["--peer", "x", "--no-fused-batch-norm", "--xla", "--intra-op-threads", "1", "--precision", "auto"])
    command = peer.ours_command(args, "bfloat16", "/tmp/ours.json")
    assert {"--no-fused-batch-norm", "--xla"} <= set(command)
    assert command[command.index("--intra-op-threads") + 1] == "1"
    assert command.count("--precision") == 1 and command[command.index("--precision") + 1] == "bfloat16"
    assert bench.build_parser().parse_args(command[3:]).fused_batch_norm is False


@pytest.mark.parametrize("line, rate", [('{"images_per_sec": "500"}', 500.0), ('{"images_per_sec": 0}', None),
                                        ('{"images_per_sec": NaN}', None), ('{"images_per_sec": -3}', None)])
def test_a_peer_rate_is_a_positive_number_or_the_round_is_an_error(tmp_path, line, rate):
    command, _ = write_peer(tmp_path, body=f"print({line!r})")
    result = peer.run_child(command.split(), timeout=60)
    if rate is None:
        assert "images_per_sec" in result["error"]
    else:
        assert result["images_per_sec"] == rate and isinstance(result["images_per_sec"], float)
    # Neither the progress line nor the summary may crash on what the peer printed.
    summary = peer.summarize([{"images_per_sec": 600.0}], [result])
    assert ("ratio" in summary) == (rate is not None)


@pytest.mark.parametrize("command, message", [("python 'unclosed", "No closing quotation"), ("  ", "empty")])
def test_a_peer_command_that_cannot_be_split_is_refused_before_any_round(monkeypatch, command, message):
    """A ConfigError (one line from the CLI), not a ValueError traceback or rounds of "cannot run --network"."""
    calls = []
    monkeypatch.setattr(peer, "run_child", lambda *a, **k: calls.append(a) or {"error": "not run"})
    args = parse(["--preset", "tiny", "--rounds", "1", "--precision", "float32", "--peer", command])
    with pytest.raises(ConfigError, match=f"--peer .*{message}"):
        peer.run_peer_comparison(args, print_fn=lambda *a, **k: None)
    assert calls == []


def test_a_missing_data_dir_is_refused_before_any_round(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(peer, "run_child", lambda *a, **k: calls.append(a) or {"error": "not run"})
    args = parse(["--preset", "tiny", "--rounds", "1", "--precision", "float32", "--peer", "python x.py",
                  "--data-dir", str(tmp_path / "missing")])
    with pytest.raises(DataError, match="no such directory"):
        peer.run_peer_comparison(args, print_fn=lambda *a, **k: None)
    assert calls == []


def test_a_timed_out_peer_leaves_no_process_behind(tmp_path):
    """A wrapper command (a shell, `uv run`...) whose child outlives a timeout would skew every later round."""
    pid_file = tmp_path / "grandchild.pid"
    body = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    command, _ = write_peer(tmp_path, body=body)
    assert "timed out" in peer.run_child(command.split(), timeout=3)["error"]
    pid = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous
        if not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the peer's child {pid} is still running after the timeout")
