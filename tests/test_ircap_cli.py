"""Command-line parsing: no prefix abbreviations (ircap and the other CLIs), no key on the screen."""
import io
import json

import pytest
from PIL import Image

from open_clip_thermal.ircap import main
from open_clip_thermal.ircap.cli import build_parser
from open_clip_thermal.testing.mock_vlm import MockChatServer

SECRET = "sk-live-9fQ2xTz7LmN4"


@pytest.fixture()
def pairs(tmp_path):
    (tmp_path / "rgb").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color=(1, 2, 3)).save(buf, format="PNG")
    (tmp_path / "rgb" / "a.png").write_bytes(buf.getvalue())
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"id": "a", "image": "thermal/a.png", "rgb": "rgb/a.png"}) + "\n")
    return tmp_path


def _dry_run(root, server, *extra):
    return ["caption", "--pairs", str(root / "pairs.jsonl"), "--rgb-root", str(root),
            "--server-url", server.url, "--model", "m", "--out", str(root / "c.jsonl"),
            "--dry-run", "--no-progress", *extra]


@pytest.mark.parametrize("argv", [
    ["caption", "--pairs", "p.jsonl", "--server-url", "http://127.0.0.1:1/v1", "--model", "m",
     "--out", "o.jsonl", "--conc", "2"],
    ["caption", "--pair", "p.jsonl", "--server-url", "http://127.0.0.1:1/v1", "--model", "m",
     "--out", "o.jsonl"],
    ["report", "c.jsonl", "--json", "r.json"],
])
def test_ircap_rejects_abbreviated_options(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2


def test_api_key_flag_is_refused_without_echoing_the_key(pairs, capsys):
    # Was: argparse took --api-key as a prefix of --api-key-env and the dry run printed
    # "(none; $<the key> unset)".
    with MockChatServer() as server:
        for form in (["--api-key", SECRET], [f"--api-key={SECRET}"]):
            with pytest.raises(SystemExit) as info:
                main(_dry_run(pairs, server, *form))
            assert info.value.code == 2
            captured = capsys.readouterr()
            assert SECRET not in captured.out + captured.err
            assert "--api-key-env" in captured.err
        assert server.requests_total == 0


def test_dry_run_never_prints_a_key_given_as_the_variable_name(pairs, capsys, monkeypatch):
    with MockChatServer() as server:
        assert main(_dry_run(pairs, server, "--api-key-env", SECRET)) == 2
        captured = capsys.readouterr()
        assert SECRET not in captured.out + captured.err
        assert "name of an environment variable" in captured.err
        # A real variable: its name is shown, its value masked.
        monkeypatch.setenv("IRCAP_CLI_KEY", SECRET)
        assert main(_dry_run(pairs, server, "--api-key-env", "IRCAP_CLI_KEY",
                             "--extra-body", json.dumps({"note": SECRET}))) == 0
        captured = capsys.readouterr()
        assert SECRET not in captured.out + captured.err
        assert "Bearer ***" in captured.out
        assert server.requests_total == 0


def test_dry_run_hides_credentials_in_the_server_url(pairs, capsys):
    with MockChatServer() as server:
        url = server.url.replace("http://", f"http://user:{SECRET}@") + f"?key={SECRET}"
        argv = _dry_run(pairs, server)
        argv[argv.index("--server-url") + 1] = url
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "POST http://127.0.0.1:" in out
# ---- the other command lines of the package ---------------------------------------------------

def test_benchmark_cli_rejects_abbreviated_options():
    from open_clip_thermal.benchmark.cli import build_parser as benchmark_parser
    ok = benchmark_parser().parse_args(["--data", "test.tar", "--out", "o", "--base-model", "B"])
    assert ok.base_model == "B"
    with pytest.raises(SystemExit) as info:
        benchmark_parser().parse_args(["--data", "test.tar", "--out", "o", "--base-m", "B"])
    assert info.value.code == 2


def test_quickstart_rejects_abbreviated_options():
    from open_clip_thermal.quickstart import build_parser as quickstart_parser
    with pytest.raises(SystemExit) as info:
        quickstart_parser().parse_args(["--num-tr", "10"])  # prefix of --num-train
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["generate", "--out", "x", "--num-tr", "10"],
                                  ["pretrain-proxy", "--ste", "3"]])
def test_synthetic_cli_rejects_abbreviated_options(argv):
    from open_clip_thermal.synthetic.cli import build_parser as synthetic_parser
    with pytest.raises(SystemExit) as info:
        synthetic_parser().parse_args(argv)
    assert info.value.code == 2
