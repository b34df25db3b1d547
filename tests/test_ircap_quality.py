"""RGB-hallucination lint, coverage lexicons, prompts and the quality report."""
import json
from pathlib import Path

import pytest

from open_clip_thermal.ircap import quality
from open_clip_thermal.ircap.prompts import PROMPT_NAMES, load_prompt_set
from open_clip_thermal.ircap.quality import CoverageLexicon, RGBHallucinationLint, lint_summary
from open_clip_thermal.ircap.report import build_report, render_markdown


@pytest.fixture(scope="module")
def lint():
    return RGBHallucinationLint()


@pytest.mark.parametrize("caption, flagged", [
    ("white lane markings", ["white"]),
    ("infrared thermal scene with a dark-coloured car and a red jacket", ["dark-coloured", "red"]),
    ("a shiny metal roof next to GREEN trees", ["shiny", "green"]),
    ("snow-white van", ["white"]),
    ("a colourful banner", ["colourful"]),
])
def test_lint_flags_rgb_words(lint, caption, flagged):
    assert lint.flagged_terms(caption) == flagged
    assert not lint.passes(caption)


@pytest.mark.parametrize("caption", [
    "lane markings appear cooler than the asphalt",
    "pedestrians appear white-hot in the white hot palette, cold sky black-hot",
    "the engine block is red-hot compared with the blackbody reference",
    "a greybody with emissivity 0.9 in a greyscale frame; black ice on the bridge",
    "bright regions are warm and dark regions are cool",
])
def test_lint_passes_thermal_vocabulary(lint, caption):
    assert lint.flagged_terms(caption) == []


def test_lint_hit_offsets_point_into_the_caption(lint):
    caption = "white-hot people near white lane markings"
    hits = lint.check(caption)
    assert [(h.term, h.category) for h in hits] == [("white", "colour")]
    assert caption[hits[0].start:hits[0].end] == "white"
    assert hits[0].start == caption.index("white lane")


def test_lint_summary_counts(lint):
    summary = lint_summary(lint, [("a", "white car, white line"), ("b", "cool asphalt"),
                                  ("c", "glossy red car")])
    assert summary["count"] == 3 and summary["flagged"] == 2
    assert summary["top_terms"] == {"white": 1, "glossy": 1, "red": 1}
    assert summary["examples"] == [{"id": "a", "terms": ["white"]}, {"id": "c", "terms": ["glossy", "red"]}]


def test_coverage_per_attribute():
    lexicon = CoverageLexicon()
    captions = ["infrared thermal street at night, overcast, asphalt under street lights",
                "infrared thermal park in the afternoon sunlight",
                "infrared thermal parking lot"]
    cov = lexicon.coverage(captions, "global")
    assert cov == {"illumination": 2 / 3, "time_of_day": 2 / 3, "weather": 1 / 3, "materials": 1 / 3}
    fg = lexicon.attributes_of("warm tyres; the glass reflects the cold sky", "fine_grained")
    assert fg == {"heat_signatures": True, "thermal_phenomena": True}
    assert lexicon.coverage([], "fine_grained") == {"heat_signatures": 0.0, "thermal_phenomena": 0.0}
    with pytest.raises(ValueError, match="unknown caption kind"):
        lexicon.coverage(captions, "rgb")


@pytest.mark.parametrize("caption", [
    "infrared thermal image of lit windows and a windshield",  # not wind
    "infrared thermal image of a hazard sign",  # not haze
    "infrared thermal image of a mistake in the road paint",  # not mist
    "infrared thermal image of a raincoat on a hook",  # not rain
    "infrared thermal image of a snowboard shop",  # not snow
    "infrared thermal image of a storefront",  # not storm
])
def test_weather_coverage_matches_whole_words_only(caption):
    assert CoverageLexicon().attributes_of(caption, "global")["weather"] is False


@pytest.mark.parametrize("caption", [
    "infrared thermal image on a windy evening", "infrared thermal image in light haze",
    "infrared thermal image after it rained", "infrared thermal image of a misty, foggy road",
    "infrared thermal image in a snow-covered street",
])
def test_weather_coverage_still_counts_the_inflections(caption):
    assert CoverageLexicon().attributes_of(caption, "global")["weather"] is True


def test_shipped_coverage_lexicon_has_no_prefix_wildcards():
    lexicon = json.loads((Path(quality.LEXICON_DIR) / "coverage.json").read_text())
    terms = [t for kind in ("global", "fine_grained") for words in lexicon[kind].values() for t in words]
    assert terms and not [t for t in terms if "*" in t]


def test_a_tired_driver_is_not_a_tyre():
    assert CoverageLexicon().attributes_of("the tired driver waits", "fine_grained")["heat_signatures"] is False


def test_paper_rating_guide_is_one_lexicon_edit_away(tmp_path):
    """docs/ircap.md: "dark"/"bright" are not flagged by default; adding them to `colour` follows the paper."""
    shipped = json.loads((Path(quality.LEXICON_DIR) / "rgb_terms.json").read_text())
    assert RGBHallucinationLint().passes("infrared thermal image of a dark street")
    shipped["colour"] = shipped["colour"] + ["dark", "bright"]
    custom = tmp_path / "paper_guide.json"
    custom.write_text(json.dumps(shipped))
    strict = RGBHallucinationLint(custom)
    assert strict.flagged_terms("infrared thermal image of a dark street, bright sky") == ["dark", "bright"]
    assert strict.passes("pedestrians appear white-hot")  # the allowed list still applies


def test_custom_lexicon_errors_name_the_file(tmp_path):
    bad = tmp_path / "rgb.json"
    bad.write_text(json.dumps({"colour": ["red"]}))
    with pytest.raises(ValueError, match="rgb.json"):
        RGBHallucinationLint(bad)


def test_prompts_versions_and_override(tmp_path):
    shipped = load_prompt_set()
    for p in (shipped.global_, shipped.fine_grained):
        assert "infrared thermal" in p.text and not p.text.startswith("#")
    versions = shipped.versions()
    assert sorted(versions) == sorted(PROMPT_NAMES)
    (tmp_path / "global.txt").write_text("# a comment\nDescribe the thermal scene.\n")
    custom = load_prompt_set(tmp_path)
    assert custom.global_.text == "Describe the thermal scene."
    assert custom.versions()["global"] != versions["global"]
    assert custom.versions()["fine_grained"] == versions["fine_grained"]
    # A changed comment keeps the version; it hashes only the text sent.
    (tmp_path / "global.txt").write_text("# another comment\nDescribe the thermal scene.\n")
    assert load_prompt_set(tmp_path).versions()["global"] == custom.versions()["global"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none"):
        load_prompt_set(tmp_path / "empty")


def test_report_on_handwritten_records(tmp_path):
    records = [
        {"id": "a", "global_caption": "infrared thermal street at night with white lane markings",
         "fg_caption": "infrared thermal: warm tyres, metal reflects the cold sky",
         "ircap": {"model": "m", "server": "http://h/v1", "prompts": {"global": "global@1"},
                   "attempts": 3, "seconds": 1.0,
                   "requests": {"global": {"fix": {"rounds": 1, "resolved": False}}}}},
        {"id": "b", "global_caption": "a rainy day on asphalt", "fg_caption": "people " * 100,
         "ircap": {"model": "m", "server": "http://h/v1", "attempts": 2, "seconds": 3.0}},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_report(path)
    g, f = report["kinds"]["global"], report["kinds"]["fine_grained"]
    assert report["records"] == 2
    assert g["lint"]["flagged"] == 1 and g["lint"]["top_terms"] == {"white": 1}
    assert g["fixes"] == {"re_asked": 1, "resolved": 0, "rounds": 1}
    assert g["prefix_share"] == 0.5
    assert g["coverage"]["time_of_day"] == {"ours": 1.0, "paper": 0.75}
    assert g["coverage"]["weather"]["ours"] == 0.5
    assert f["coverage"]["thermal_phenomena"] == {"ours": 0.5, "paper": 0.97}
    assert f["length_clip_tokens"]["over_context"] == 1
    assert report["provenance"]["requests_total"] == 5
    md = render_markdown(report)
    assert "| global | time_of_day | 100.0 % | 75.0 % |" in md
