"""The side-by-side benchmarks import and parse their arguments; their pure helpers hold: a refactor that
breaks bench/ fails here, not only when someone runs a benchmark."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import pytest

from bench import ecosystem_vs_dockerd as eco
from bench import engine_vs_dockerd, peers


def test_engine_vs_dockerd_uses_the_shared_peers():
    assert engine_vs_dockerd.Peers is peers.Peers and engine_vs_dockerd.BenchError is peers.BenchError


def test_parse_args_defaults_and_subsets():
    args = eco.parse_args([])
    assert (args.rounds, args.image_mb, args.only) == (3, 100, ["build", "registry", "compose"])
    assert eco.parse_args(["--only", "registry, build", "--rounds", "5"]).only == ["registry", "build"]


@pytest.mark.parametrize("argv", [["--only", "buidl"], ["--only", ","], ["--rounds", "0"], ["--image-mb", "0"]])
def test_parse_args_refuses_bad_input(argv, capsys):
    with pytest.raises(SystemExit) as e:
        eco.parse_args(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_interleaved_alternates_which_engine_goes_first():
    assert eco.interleaved(3) == [
        (0, "dockyard"),
        (0, "dockerd"),
        (1, "dockerd"),
        (1, "dockyard"),
        (2, "dockyard"),
        (2, "dockerd"),
    ]


def test_ratio_line_verdicts():
    assert eco.ratio_line("x", 1.0, 4.0, 0.5).endswith("0.25x  <= 0.5x  MET")
    assert "MISSED by 1.50x" in eco.ratio_line("x", 3.0, 4.0, 0.5)
    assert eco.ratio_line("x", 1.0, 0.0).endswith("infx  (info)")


def test_build_context_is_deterministic(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert eco.write_build_context(a, small_files=12, assets=2, asset_kb=4) == 19
    eco.write_build_context(b, small_files=12, assets=2, asset_kb=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # every file the Dockerfile copies or adds is there; ADD's tar unpacks
    for line in (a / "Dockerfile").read_text().splitlines():
        if line.startswith(("COPY ", "ADD ")):
            assert (a / line.split()[1]).exists(), line
    with tarfile.open(a / "bundle.tar") as tar:
        assert len(tar.getnames()) == 50


def test_big_image_layers_are_sized_repeatable_and_half_compressible():
    layers = eco.big_image_layers(2, layers=4)
    assert layers == eco.big_image_layers(2, layers=4) and len(set(layers)) == 4
    assert all(512 * 1024 < len(layer) < 512 * 1024 + 16384 for layer in layers)
    ratios = [len(zlib.compress(layer, 6)) / len(layer) for layer in layers]
    assert ratios[0] > 0.95 and ratios[2] > 0.95 and ratios[1] < 0.5 and ratios[3] < 0.5, ratios


def test_dockerd_command_line_stays_in_its_namespaces(tmp_path: Path):
    """dockerd starts in the host's netns, in a private mount namespace, and adds no rule or bridge."""

    class Host:
        netns = "dy-9-x"

    d = peers.Dockerd(Host(), tmp_path)
    try:
        argv = d.argv()
        assert argv[:2] == ["nsenter", "--net=/run/netns/dy-9-x"] and "--mount" in argv
        script = Path(argv[-1]).read_text()
        for flag in ("--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none", "pivot_root"):
            assert flag in script
    finally:
        d.stop()
    assert not d.dir.exists()


def test_report_prints_every_measured_row(capsys):
    rows = {"dockyard": [1.0, 2.0, 1.5], "dockerd": [2.0, 3.0, 2.5]}
    results = {
        "versions": {"dockyard": "0.1.0", "dockerd": "20.10.24"},
        "elapsed": 1.0,
        **{key: rows for key in ("build cold", "build cached", "push + pull", "compose up", "compose down")},
        "compose floor": {"docker-compose start": [0.4], "health intervals": [2.0]},
    }
    eco.report(eco.parse_args(["--rounds", "3"]), results)
    out = capsys.readouterr().out
    assert out.count("<= 1.0x  MET") == 2 and out.count("MISSED by 1.20x") == 3  # medians 1.5 vs 2.5
    assert "compose up minus that (info)" in out and "push " not in out.replace("push + pull", "")
