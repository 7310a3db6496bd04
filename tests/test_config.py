"""Config validation, overrides and the messages a user sees for a typo."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from tests.conftest import ROOT

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_shipped_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.stages and cfg.stages[0].reader is not None


def test_misspelled_step_key_names_its_path_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, ["stages.heuristics.steps.gopher_quality.min_doc_word=80"])
    assert "stages.1.steps.1" in str(err.value)
    assert "'min_doc_word'" in str(err.value) and "did you mean 'min_doc_words'" in str(err.value)


@pytest.mark.parametrize("override,expected", [
    ("ray.adress=auto", "unknown key 'ray.adress'; did you mean 'address'"),
    ("stages.0.resources.num_cpu=2", "did you mean 'num_cpus'"),
    ("outptu_dir=/tmp/x", "did you mean 'output_dir'"),
    ("stages.0.steps.1.type=extrct", "unknown step 'extrct'; did you mean 'extract'"),
    ("stages.heuristic.batch_size=3", "no item named 'heuristic'; did you mean 'heuristics'"),
    ("stages.heuristics.batch_size=many", "batch_size"),
])
def test_typos_fail_before_any_work(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    assert expected in str(err.value)


def test_typo_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("max_record_bytes", "max_record_byte"))
    with pytest.raises(ConfigError, match="max_record_byte.*did you mean 'max_record_bytes'"):
        load_config(bad)


def test_overrides_by_name_and_index_and_input():
    cfg = load_config(QUICKSTART, [
        "stages.heuristics.steps.gopher_quality.min_doc_words=80",
        "stages.0.steps.2.min_score=0.5",
        "input=/data/*.warc.gz",
        "ray.num_cpus=4",
    ])
    assert cfg.stages[1].steps[1]["min_doc_words"] == 80
    assert cfg.stages[0].steps[2]["min_score"] == 0.5
    assert cfg.input == ["/data/*.warc.gz"]
    assert cfg.ray.num_cpus == 4


def test_cli_reports_config_errors_with_exit_code_2(capsys, tmp_path):
    code = main(["run", str(QUICKSTART), "--set", "stages.extract.steps.langid.min_scor=0.3",
                 "--set", f"output_dir={tmp_path}/run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "did you mean 'min_score'" in err
    assert not (tmp_path / "run").exists()  # failed before any work started


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
