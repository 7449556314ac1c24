"""Every command through click's runner, on a real registry folder with the offline weights."""

from __future__ import annotations

import csv
import json
import os
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
    assert answers[0]["decision"] == "match" and isinstance(answers[0]["decision_id"], int)
    assert answers[0]["policy_version"] == json.loads(_run(*home, "policy", "show", "--json"))["version"]

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

    edited = json.loads(_run(*home, "--json", "edit", code, "--sex", "male", "--alternate-id", "park:7"))
    assert edited["attributes"]["sex"] == "male" and edited["attributes"]["alternate_ids"] == ["park:7"]
    assert "male" in _run(*home, "history", code) and "alias park:7" in _run(*home, "history", code)
    assert "Panthera pardus" in _run(*home, "species", "synleopard", "--scientific-name", "Panthera pardus")
    package = json.loads(_run(*home, "--json", "export", "camtrap-dp", str(tmp_path / "camtrap")))
    # the photo identified without a capture time: no timestamp, and its survey's deployment no place or interval
    assert package["observations"] == 13 and len(package["problems"]) == 3
    assert "no capture time" in package["problems"][0] and all("season-2" in p for p in package["problems"][1:])
    dwc = json.loads(_run(*home, "--json", "export", "dwc", str(tmp_path / "dwc.zip")))
    assert dwc["occurrences"] == 13 and dwc["individuals"] == 6
    nowhere = CliRunner().invoke(main, [*home, "export", "secr", str(tmp_path / "secr"), "--epsg", "32736"])
    assert nowhere.exit_code == 1 and "no synleopard photo has a location" in nowhere.output


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
    assert report["workspace"]["serve"] == f"registry --data-dir {report['registry']} serve"  # the README's last step
    again = subprocess.run([sys.executable, "-m", "registry", "--data-dir", str(tmp_path / "demo" / "registry"),
                            "--json", "stats"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(again.stdout)["images"] == report["stats"]["images"]


def test_json_after_the_command_and_reads_while_a_writer_holds_the_registry(tmp_path: Path,
                                                                           population: Path) -> None:
    """`--json` works where a user types it; read-only commands need neither the writer lock nor the models."""
    home = tmp_path / "reg"
    base = ["--data-dir", str(home)]
    _run(*base, "init", "--no-download")
    _run(*base, "ingest", str(population / "season1" / "manifest.csv"), "--survey", "s1")
    code = json.loads(_run(*base, "individuals", "--json"))[0]["code"]
    assert json.loads(_run(*base, "stats", "--json"))["images"] == 12
    assert isinstance(json.loads(_run(*base, "models", "list", "--json")), list)
    assert json.loads(_run(*base, "history", code, "--json"))["individual"] == code
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from registry.store.locking import RegistryLock; "
         f"lock = RegistryLock({str(home)!r}); lock.acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["stats"], ["individuals"], ["history", code], ["review"], ["changes"], ["policy", "show"],
                     ["export", "sightings", str(tmp_path / "s.csv")]):
            result = CliRunner().invoke(main, [*base, *args, "--json"], catch_exceptions=False)
            assert result.exit_code == 0, (args, result.output)
            json.loads(result.stdout)
        refused = CliRunner().invoke(main, [*base, "merge", code, code])
        assert refused.exit_code == 1 and f"in use by PID {holder.pid}" in refused.output  # curation writes
    finally:
        holder.kill()


def test_a_plain_wheel_install_can_create_a_registry(tmp_path: Path) -> None:
    """The migrations ship inside the package: built as a wheel and installed (not editable) elsewhere, the
    package alone runs `registry init` against a fresh catalog."""
    root = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(root)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    script = ("import registry, sys; assert registry.__file__.startswith(sys.argv[1]), registry.__file__; "
              "from registry.interfaces.cli.main import main; main(['--data-dir', sys.argv[2], 'init', "
              "'--no-download'])")
    result = subprocess.run([sys.executable, "-c", script, str(target), str(tmp_path / "reg")], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "reg" / "registry.sqlite").exists()
