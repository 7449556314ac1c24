"""Every command through click's runner, on a real registry folder with the offline weights."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from registry.interfaces.cli.main import main


def _manifest(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _run(*args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.stdout  # progress bars go to stderr


def test_full_workflow_through_the_cli(tmp_path: Path, population: Path) -> None:
    home = ["--data-dir", str(tmp_path / "reg")]
    assert json.loads(_run(*home, "--json", "init"))["profile"] == "offline"
    ingest = json.loads(_run(*home, "--json", "ingest", str(population / "season1" / "manifest.csv"),
                             "--survey", "season-1"))
    assert ingest["added"] == 12 and ingest["skipped"] == 0 and Path(ingest["report"]).exists()

    rows = _manifest(population / "season2" / "manifest.csv")
    known = {r["identity"] for r in _manifest(population / "season1" / "manifest.csv")}
    returning = next(r for r in rows if r["identity"] in known)
    photo = str(population / "season2" / returning["image"])
    text = _run(*home, "identify", photo)  # the registry's only species is the default
    assert "match SYN-" in text and "1. SYN-" in text
    answers = json.loads(_run(*home, "--json", "identify", photo, "--species", "synleopard", "--record",
                              "--survey", "season-2"))
    code = answers[0]["individual"]
    assert answers[0]["decision"] == "match" and answers[0]["decision_id"] == 1

    history = json.loads(_run(*home, "--json", "history", code))
    assert history["individual"] == code and history["name"] == returning["identity"]
    assert [s["method"] for s in history["sightings"]][-1] == "automatic" and history["surveys"] == 2
    assert code in _run(*home, "history", returning["identity"])  # by name too
    listed = json.loads(_run(*home, "--json", "individuals", "--species", "synleopard"))
    assert len(listed) == 6 and sum(i["sightings"] for i in listed) == 13
    stats = json.loads(_run(*home, "--json", "stats"))
    assert {k: stats[k] for k in ("individuals", "images", "sightings", "decisions")} == \
        {"individuals": 6, "images": 13, "sightings": 13, "decisions": 1}

    unknown = CliRunner().invoke(main, [*home, "history", "SYN-9999"])
    assert unknown.exit_code == 1 and "no individual with code or name 'SYN-9999'" in unknown.output


def test_ingest_reports_bad_rows_and_exits_3(tmp_path: Path, population: Path) -> None:
    home = ["--data-dir", str(tmp_path / "reg")]
    _run(*home, "init")
    manifest = tmp_path / "m.csv"
    first = _manifest(population / "season1" / "manifest.csv")[0]
    manifest.write_text("image,species,identity\n"
                        f"{population / 'season1' / first['image']},synleopard,{first['identity']}\n"
                        "missing.jpg,synleopard,x\n")
    out = _run(*home, "ingest", str(manifest), "--survey", "s", expect=3)
    assert "1 added" in out and f"{manifest}:3: " in out and "file not found" in out
    missing = CliRunner().invoke(main, [*home, "ingest", str(tmp_path / "nope.csv"), "--survey", "s"])
    assert missing.exit_code == 1 and "manifest not found" in missing.output


def test_synth_and_uninitialised_registry_message(tmp_path: Path) -> None:
    data = json.loads(_run("--json", "synth", str(tmp_path / "pop"), "--individuals", "2", "--seasons", "1",
                           "--seed", "5"))
    assert data["individuals"] == 2 and Path(data["manifests"][0]).exists()
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "none"), "stats"])
    assert result.exit_code == 1 and "run `registry init` first" in result.output


def test_demo_runs_end_to_end_as_a_real_process(tmp_path: Path) -> None:
    """`python -m registry demo` in a subprocess: the README's main job, at a small size."""
    result = subprocess.run(
        [sys.executable, "-m", "registry", "--data-dir", str(tmp_path / "demo"), "--json", "demo",
         "--individuals", "6", "--seed", "2"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["decisions"] > 0 and report["stats"]["decisions"] == report["decisions"]
    assert set(report["overall"]) >= {"baks", "baus", "score", "top1", "top5", "queries"}
    assert report["overall"]["score"] >= 0.8
    again = subprocess.run([sys.executable, "-m", "registry", "--data-dir", str(tmp_path / "demo" / "registry"),
                            "--json", "stats"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(again.stdout)["images"] == report["stats"]["images"]
