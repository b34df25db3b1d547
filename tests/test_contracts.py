"""open_clip_thermal.contracts: the one definition of the shard schema, branches, fusion modes and λ."""
import inspect
import subprocess
import sys
import textwrap

import pytest

from open_clip_thermal import contracts


def test_contracts_imports_no_torch_numpy_or_webdataset():
    code = textwrap.dedent("""
        import sys
        import open_clip_thermal.contracts
        print(any(name in sys.modules for name in ("torch", "numpy", "webdataset")))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_values_match_docs_contracts():
    assert (contracts.GLOBAL, contracts.FINE_GRAINED, contracts.MIXED) == ("global", "fine_grained", "mixed")
    assert contracts.BRANCHES == ("global", "fine_grained")
    assert contracts.FUSION_MODES == ("feature", "score")
    assert contracts.DEFAULT_LAM == 0.7
    assert contracts.CAPTION_FIELDS == {"global": "txt", "fine_grained": "fg.txt"}
    assert (contracts.GLOBAL_CAPTION_KEY, contracts.FG_CAPTION_KEY, contracts.METADATA_KEY) == ("txt", "fg.txt", "json")
    assert contracts.THERMAL_EXTENSIONS[0] == "png"
    assert set(contracts.STANDARD_EXTENSIONS.values()) <= set(contracts.THERMAL_EXTENSIONS)


def test_data_modules_share_the_objects():
    from open_clip_thermal.data import conversion, image_files, loader
    assert loader.THERMAL_EXTENSIONS is contracts.THERMAL_EXTENSIONS
    assert loader.GLOBAL_CAPTION_KEY is contracts.GLOBAL_CAPTION_KEY
    assert loader.FG_CAPTION_KEY is contracts.FG_CAPTION_KEY
    assert loader.CAPTION_MODES == (contracts.GLOBAL, contracts.FINE_GRAINED, "both", contracts.MIXED)
    assert image_files.STANDARD_EXTENSIONS is contracts.STANDARD_EXTENSIONS
    for name in ("GLOBAL_CAPTION_KEY", "FG_CAPTION_KEY", "METADATA_KEY", "RGB_PREFIX", "SAMPLE_KEY"):
        assert getattr(conversion, name) is getattr(contracts, name)


def test_benchmark_modules_share_the_objects():
    from open_clip_thermal.benchmark import cli, runner
    from open_clip_thermal.evaluation import fused, retrieval, variants
    from open_clip_thermal.evaluation import shard_reader as shards
    assert shards.IMAGE_EXTENSIONS is contracts.THERMAL_EXTENSIONS
    assert shards.CAPTION_FIELDS is contracts.CAPTION_FIELDS
    assert runner.CAPTION_FIELDS is contracts.CAPTION_FIELDS
    assert retrieval.DEFAULT_RECALL_KS is contracts.DEFAULT_RECALL_KS
    assert cli.build_parser().get_default("recall_k") == list(contracts.DEFAULT_RECALL_KS)
    assert (shards.GLOBAL, shards.FINE_GRAINED) == (contracts.GLOBAL, contracts.FINE_GRAINED)
    assert variants.GLOBAL is contracts.GLOBAL and variants.FINE_GRAINED is contracts.FINE_GRAINED
    assert fused.FUSION_MODES is contracts.FUSION_MODES
    assert fused.BRANCH_ORDER is contracts.BRANCHES
    assert cli.build_parser().get_default("lam") == contracts.DEFAULT_LAM


def test_registry_lambda_default_is_the_contract():
    from open_clip_thermal import registry
    assert registry.DEFAULT_LAM is contracts.DEFAULT_LAM
    defaults = {fn.__name__: p.default for fn in vars(registry).values() if inspect.isfunction(fn)
                for n, p in inspect.signature(fn).parameters.items() if n == "lam" and p.default is not None
                and p.default is not inspect.Parameter.empty}
    assert defaults and all(value is contracts.DEFAULT_LAM for value in defaults.values()), defaults


def test_one_shard_url_expansion():
    from open_clip_thermal.evaluation import shard_reader as shards
    from open_clip_thermal.data import loader, sources
    assert loader.expand_urls is sources.expand_urls
    assert shards.sources is sources  # shard_reader.expand_urls only rewords sources.expand_urls' errors
    with pytest.raises(sources.ShardListError) as error:
        sources.expand_urls("::")
    assert isinstance(error.value, ValueError) and error.value.problem == "empty"
