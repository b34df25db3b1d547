"""Import cost: torch-free entry points stay torch-free, and OpenCLIP users still get the models registered."""
import subprocess
import sys
import textwrap

import pytest

HELP_SCRIPT = textwrap.dedent("""
    import runpy, sys
    sys.argv = ["{module}", *{args!r}]
    try:
        runpy.run_module("{module}", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        assert exit.code in (0, None), exit.code
    print("torch" in sys.modules, "open_clip" in sys.modules)
""")


def _run(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module,args", [
    ("open_clip_thermal.convert", ["--help"]),
    ("open_clip_thermal.ircap", ["--help"]),
    ("open_clip_thermal.ircap", ["caption", "--help"]),
    ("open_clip_thermal.ircap", ["report", "--help"]),
    ("open_clip_thermal.benchmark", ["--help"]),
    ("open_clip_thermal.quickstart", ["--help"]),
    ("open_clip_thermal.synthetic", ["--help"]),
    ("open_clip_thermal.synthetic", ["generate", "--help"]),
    ("open_clip_thermal.synthetic", ["pretrain-proxy", "--help"]),
    ("open_clip_thermal.classify", ["--help"]),
    ("open_clip_thermal.classify", ["crops", "--help"]),
    ("open_clip_thermal.classify", ["synthetic-tree", "--help"]),
    ("open_clip_thermal.search", ["--help"]),
    ("open_clip_thermal.search", ["index", "--help"]),
    ("open_clip_thermal.search", ["query", "--help"]),
    ("open_clip_thermal.reproduce", ["--help"]),
    ("open_clip_thermal.train", ["--help"]),
])
def test_torch_free_commands_import_no_torch(module, args):
    assert _run(HELP_SCRIPT.format(module=module, args=args)) == "False False"


def test_package_import_is_light_and_registers_once_open_clip_is_imported():
    code = textwrap.dedent("""
        import sys
        import open_clip_thermal
        light = "torch" not in sys.modules and "open_clip" not in sys.modules
        import open_clip
        print(light, "tclip-dual" in open_clip.list_models(), open_clip_thermal.registry.is_installed())
    """)
    assert _run(code) == "True True True"


@pytest.mark.parametrize("first", ["import open_clip", "import open_clip_train.main",
                                   "from open_clip_thermal import create_model"])
def test_registration_in_every_import_order(first):
    code = textwrap.dedent(f"""
        {first}
        import open_clip, open_clip_thermal
        from open_clip_thermal import registry
        print(registry.is_installed(), "tclip-tiny-dual" in open_clip.list_models(),
              type(open_clip.create_model("tclip-tiny-dual")).__name__)
    """)
    assert _run(code) == "True True DualLoRAFusion"


def test_command_packages_forward_their_names_on_first_use():
    code = textwrap.dedent("""
        import sys
        import open_clip_thermal.train as train, open_clip_thermal.benchmark as benchmark
        before = "open_clip_thermal.train.cli" in sys.modules, "open_clip_thermal.evaluation.retrieval" in sys.modules
        import open_clip_thermal.train.cli as cli
        from open_clip_thermal.evaluation.retrieval import retrieval_recalls
        same = train.main is cli.main and benchmark.retrieval_recalls is retrieval_recalls
        try:
            train.no_such_name
            missing = "no error"
        except AttributeError as error:
            missing = str(error)
        print(before, same, missing == "module 'open_clip_thermal.train' has no attribute 'no_such_name'")
    """)
    assert _run(code) == "(False, False) True True"
