"""IR-Cap captioning runs end to end against a real 127.0.0.1 server: output records, faults,
errors file, kill-and-resume, hallucination re-asks, dry run, report and conversion to shards."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from open_clip_thermal.ircap import main
from open_clip_thermal.ircap.prompts import load_prompt_set
from open_clip_thermal.ircap.records import (JsonlAppender, load_jsonl_ids, read_pairs,
                                             repair_partial_line)
from open_clip_thermal.testing.mock_vlm import MockChatServer, expected_caption

REPO = Path(__file__).resolve().parents[1]
FAST = ["--backoff", "0.001", "--backoff-max", "0.002", "--no-progress"]


def make_pairs(root: Path, n: int, server: MockChatServer = None) -> Path:
    """``n`` tiny thermal/RGB PNG pairs under ``root`` and a JSONL listing; names the RGB images
    on the server so its counters are per id."""
    (root / "thermal").mkdir(parents=True, exist_ok=True)
    (root / "rgb").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        sid = f"s{i:02d}"
        Image.new("L", (8, 8), color=10 * i).save(root / "thermal" / f"{sid}.png")
        rgb = io.BytesIO()
        Image.new("RGB", (8, 8), color=(i, 255 - i, 7)).save(rgb, format="PNG")
        (root / "rgb" / f"{sid}.png").write_bytes(rgb.getvalue())
        if server is not None:
            server.name_image(rgb.getvalue(), sid)
        lines.append({"id": sid, "image": f"thermal/{sid}.png", "rgb": f"rgb/{sid}.png",
                      "split": "val" if i % 4 == 3 else "train", "dataset": "synthetic",
                      "meta": {"time_of_day": "night", "index": i}})
    listing = root / "pairs.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return listing


def caption_args(root: Path, server: MockChatServer, out: Path, *extra: str):
    return ["caption", "--pairs", str(root / "pairs.jsonl"), "--rgb-root", str(root),
            "--server-url", server.url, "--model", "mock-vlm", "--out", str(out), *FAST, *extra]


def read_lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def server():
    with MockChatServer(hang_seconds=1.5) as s:
        yield s


def test_caption_report_and_convert_end_to_end(tmp_path, server, monkeypatch, capsys):
    make_pairs(tmp_path, 4, server)
    out = tmp_path / "captions.jsonl"
    monkeypatch.setenv("IRCAP_TEST_KEY", "sekrit-key")
    assert main(caption_args(tmp_path, server, out, "--api-key-env", "IRCAP_TEST_KEY",
                             "--concurrency", "3")) == 0
    records = read_lines(out)
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert sorted(r["id"] for r in records) == [p["id"] for p in pairs]
    versions = load_prompt_set().versions()
    for record in records:
        pair = next(p for p in pairs if p["id"] == record["id"])
        for field in ("image", "rgb", "split", "dataset", "meta"):
            assert record[field] == pair[field]
        assert record["global_caption"] == expected_caption(record["id"], "global")
        assert record["fg_caption"] == expected_caption(record["id"], "fine_grained")
        prov = record["ircap"]
        assert prov["model"] == "mock-vlm" and prov["server"] == server.url
        assert prov["prompts"] == {"global": versions["global"], "fine_grained": versions["fine_grained"]}
        assert prov["attempts"] == 2
        assert {k: v["attempts"] for k, v in prov["requests"].items()} == {"global": 1, "fine_grained": 1}
    assert server.item_counts() == {p["id"]: 2 for p in pairs}
    assert server.auth_headers == {"Bearer sekrit-key": 8}
    assert "sekrit" not in out.read_text()
    assert (tmp_path / "captions.errors.jsonl").read_text() == ""

    # Quality report.
    assert main(["report", str(out)]) == 0
    report = json.loads((tmp_path / "captions.report.json").read_text())
    assert report["records"] == 4 and report["errors"]["count"] == 0
    assert report["kinds"]["global"]["lint"]["flagged"] == 0
    assert report["kinds"]["global"]["coverage"]["time_of_day"]["ours"] == 1.0
    assert report["kinds"]["fine_grained"]["prefix_share"] == 1.0
    assert report["provenance"]["requests_total"] == 8
    assert "## Attribute coverage" in (tmp_path / "captions.report.md").read_text()
    assert "| global | illumination |" in capsys.readouterr().out

    # Captions -> shards with the converter, the second of the two commands.
    convert = pytest.importorskip("open_clip_thermal.convert")
    shards = tmp_path / "shards"
    assert convert.main(["--annotations", str(out), "--image-root", str(tmp_path),
                         "--output-dir", str(shards), "--no-progress"]) == 0
    texts = {}
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".fg.txt"):
                    continue
                if member.name.endswith(".txt"):
                    texts[member.name[:-4]] = tar.extractfile(member).read().decode()
    assert sorted(texts.values()) == sorted(r["global_caption"] for r in records)
    sizes = json.loads((shards / "sizes.json").read_text())
    assert sum(sizes.values()) == 4


def test_faults_end_captioned_or_in_errors_then_rerun_retries_failures(tmp_path, server):
    make_pairs(tmp_path, 8, server)
    server.add_faults("s00", "global", ["500", "500"])
    server.add_faults("s01", "fine_grained", ["429"])
    server.add_faults("s02", "global", ["hang"])
    server.add_faults("s03", "fine_grained", ["malformed", "empty"])
    server.add_faults("s04", "global", ["500"] * 10)  # more than --max-attempts
    server.add_faults("s05", "fine_grained", ["400"])  # permanent
    missing_rgb = tmp_path / "rgb" / "s06.png"
    saved_rgb = missing_rgb.read_bytes()
    missing_rgb.unlink()
    out = tmp_path / "captions.jsonl"
    args = caption_args(tmp_path, server, out, "--concurrency", "4", "--timeout", "0.4",
                        "--max-attempts", "4")
    assert main(args) == 1  # some pairs failed

    records = read_lines(out)
    errors = read_lines(tmp_path / "captions.errors.jsonl")
    captioned = [r["id"] for r in records]
    failed = [e["id"] for e in errors]
    assert sorted(captioned) == ["s00", "s01", "s02", "s03", "s07"]
    assert sorted(failed) == ["s04", "s05", "s06"]  # nothing lost, nothing twice
    by_id = {r["id"]: r for r in records}
    assert by_id["s00"]["ircap"]["requests"]["global"]["attempts"] == 3
    assert by_id["s01"]["ircap"]["requests"]["fine_grained"]["retries"] == ["HTTP 429"]
    assert by_id["s02"]["ircap"]["requests"]["global"]["retries"][0].startswith("timeout")
    assert by_id["s03"]["ircap"]["requests"]["fine_grained"]["attempts"] == 3
    errors_by_id = {e["id"]: e for e in errors}
    assert errors_by_id["s04"]["stage"] == "global" and errors_by_id["s04"]["attempts"] == 4
    assert errors_by_id["s05"]["stage"] == "fine_grained" and "HTTP 400" in errors_by_id["s05"]["error"]
    assert errors_by_id["s06"]["stage"] == "input" and "s06.png" in errors_by_id["s06"]["error"]
    assert server.counts[("s04", "global")] == 4 and server.counts[("s04", "fine_grained")] == 0
    assert server.item_counts()["s06"] == 0

    # Fix the causes and run again: only the failed pairs are requested.
    server.clear_faults()
    server.reset_counts()
    missing_rgb.write_bytes(saved_rgb)
    assert main(args) == 0
    assert server.item_counts() == {"s04": 2, "s05": 2, "s06": 2}
    final_ids = [r["id"] for r in read_lines(out)]
    assert sorted(final_ids) == [f"s{i:02d}" for i in range(8)]  # each exactly once
    assert read_lines(tmp_path / "captions.errors.jsonl") == []


def test_killed_run_resumes_without_repeating_finished_pairs(tmp_path, server):
    n = 12
    make_pairs(tmp_path, n, server)
    out = tmp_path / "captions.jsonl"
    gate = server.hold_after(8)  # requests 9+ wait, so the run stalls with 3-4 pairs written
    cmd = [sys.executable, "-m", "open_clip_thermal.ircap",
           *caption_args(tmp_path, server, out, "--concurrency", "2")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while server.blocked < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert server.blocked == 2  # both workers are stuck in a request
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    gate.set()

    finished_before = set(load_jsonl_ids(out))
    assert 3 <= len(finished_before) <= 4
    assert set(server.item_counts()) >= finished_before

    server.gate = None
    server.reset_counts()
    assert main(caption_args(tmp_path, server, out, "--concurrency", "2")) == 0
    requested_again = set(server.item_counts())
    assert requested_again.isdisjoint(finished_before)
    assert requested_again == {f"s{i:02d}" for i in range(n)} - finished_before
    final_ids = [r["id"] for r in read_lines(out)]
    assert sorted(final_ids) == [f"s{i:02d}" for i in range(n)]


def test_ctrl_c_keeps_every_answered_pair_and_stops_taking_new_ones(tmp_path, server):
    n = 12
    make_pairs(tmp_path, n, server)
    out = tmp_path / "captions.jsonl"
    gate = server.hold_after(4)
    cmd = [sys.executable, "-m", "open_clip_thermal.ircap",
           *caption_args(tmp_path, server, out, "--concurrency", "2")]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while server.blocked < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.blocked == 2
        proc.send_signal(signal.SIGINT)
        # Answer the held requests only once the run has stopped taking new pairs.
        for line in proc.stderr:
            if "interrupted" in line:
                break
        gate.set()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    written = [r["id"] for r in read_lines(out)]
    started = set(server.item_counts())
    # Pairs in flight at Ctrl-C were finished and written; no new pair was started.
    assert sorted(written) == sorted(started)
    assert len(written) < n and len(set(written)) == len(written)
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["captioned"] == len(written)


def test_fix_hallucinations_reasks_and_records(tmp_path, server):
    make_pairs(tmp_path, 2, server)
    server.add_faults("s00", "global", ["hallucinate"])
    out = tmp_path / "captions.jsonl"
    assert main(caption_args(tmp_path, server, out, "--fix-hallucinations")) == 0
    by_id = {r["id"]: r for r in read_lines(out)}
    fixed = by_id["s00"]
    fix = fixed["ircap"]["requests"]["global"]["fix"]
    assert fix["flagged"] == ["white", "red"] and fix["rounds"] == 1 and fix["resolved"]
    assert "white lane markings" in fix["original"]
    assert fixed["global_caption"] == expected_caption("s00", "fix")
    assert fixed["ircap"]["attempts"] == 3
    assert "fix" not in by_id["s01"]["ircap"]["requests"]["global"]
    assert server.counts[("s00", "fix")] == 1 and server.counts[("s01", "fix")] == 0


def test_dry_run_prints_first_request_and_sends_nothing(tmp_path, server, capsys):
    make_pairs(tmp_path, 3, server)
    out = tmp_path / "captions.jsonl"
    assert main(caption_args(tmp_path, server, out, "--dry-run", "--api-key-env", "IRCAP_UNSET_VAR")) == 0
    printed = capsys.readouterr().out
    assert "to caption: 3, requests: 6" in printed
    body = json.loads(printed[printed.index("{", printed.index("first request")):])
    assert body["model"] == "mock-vlm"
    image_part, text_part = body["messages"][0]["content"]
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,<")
    assert text_part["text"] == load_prompt_set().global_.text
    assert sum(server.counts.values()) == 0 and not out.exists()


def test_limit_defers_pairs_and_keeps_their_old_errors(tmp_path, server):
    make_pairs(tmp_path, 4, server)
    server.add_faults("s03", "global", ["400"])
    out = tmp_path / "captions.jsonl"
    errors = tmp_path / "captions.errors.jsonl"
    assert main(caption_args(tmp_path, server, out)) == 1
    assert [e["id"] for e in read_lines(errors)] == ["s03"]
    # A run that tries nothing keeps the old failure listed: it is still neither done nor retried.
    assert main(caption_args(tmp_path, server, out, "--limit", "0")) == 0
    assert [e["id"] for e in read_lines(errors)] == ["s03"]
    server.reset_counts()
    assert main(caption_args(tmp_path, server, out, "--limit", "1")) == 0
    assert server.item_counts() == {"s03": 2} and read_lines(errors) == []
    assert sorted(r["id"] for r in read_lines(out)) == ["s00", "s01", "s02", "s03"]


def test_cli_reports_bad_input_in_one_line(tmp_path, server, capsys):
    make_pairs(tmp_path, 1, server)
    (tmp_path / "pairs.jsonl").write_text('{"id": "a", "image": "t.png"}\n')
    assert main(caption_args(tmp_path, server, tmp_path / "c.jsonl")) == 2
    assert "lacks ['rgb']" in capsys.readouterr().err
    make_pairs(tmp_path, 1, server)
    assert main(caption_args(tmp_path, server, tmp_path / "c.jsonl", "--extra-body", "{seed")) == 2
    assert "--extra-body is not valid JSON" in capsys.readouterr().err
    assert sum(server.counts.values()) == 0


def test_quoted_answers_are_unwrapped():
    from open_clip_thermal.ircap.captioner import clean_caption
    assert clean_caption('  "infrared thermal road"\n') == "infrared thermal road"
    assert clean_caption("infrared thermal 'warm' engine") == "infrared thermal 'warm' engine"


def test_partial_last_line_is_repaired_before_appending(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "global_cap')
    assert set(load_jsonl_ids(path)) == {"a", "b"}
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert repair_partial_line(path) is False
    with JsonlAppender(path) as writer:
        writer.append({"id": "c", "global_caption": "infrared thermal ünïcode"})
    assert [r["id"] for r in read_lines(path)] == ["a", "b", "c"]


def test_read_pairs_formats_and_errors(tmp_path):
    (tmp_path / "p.csv").write_text('id,image,rgb,split,meta\n1,t/1.png,r/1.png,train,"{""weather"": ""rain""}"\n'
                                    "2,t/2.png,r/2.png,,\n")
    rows = read_pairs(tmp_path / "p.csv")
    assert rows[0] == {"id": "1", "image": "t/1.png", "rgb": "r/1.png", "split": "train",
                       "meta": {"weather": "rain"}}
    assert rows[1] == {"id": "2", "image": "t/2.png", "rgb": "r/2.png"}
    (tmp_path / "p.tsv").write_text("id\timage\trgb\nx\tt.png\tr.png\n")
    assert read_pairs(tmp_path / "p.tsv") == [{"id": "x", "image": "t.png", "rgb": "r.png"}]
    (tmp_path / "p.json").write_text(json.dumps({"records": [{"id": 5, "image": "a", "rgb": "b"}]}))
    assert read_pairs(tmp_path / "p.json")[0]["id"] == "5"
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "image": "i", "rgb": "r"}\n' * 2)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        read_pairs(tmp_path / "dup.jsonl")
    (tmp_path / "norgb.jsonl").write_text('{"id": "a", "image": "i"}\n')
    with pytest.raises(ValueError, match=r"norgb.jsonl: record #0 \(id='a'\) lacks \['rgb'\]"):
        read_pairs(tmp_path / "norgb.jsonl")
    (tmp_path / "p.txt").write_text("id image rgb\n")
    with pytest.raises(ValueError, match="unknown pairs format"):
        read_pairs(tmp_path / "p.txt")
