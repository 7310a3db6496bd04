"""Config validation, overrides and the messages a user sees for a typo."""

from __future__ import annotations

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import (
    STAGE_MODELS,
    ConfigError,
    DedupStage,
    MapStage,
    SynthStage,
    WriterConfig,
    load_config,
    validate,
)
from tests.conftest import ROOT

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_shipped_configs_validate():
    pipelines = [p for p in sorted((ROOT / "configs").rglob("*.yaml")) if "stages" in yaml.safe_load(p.read_text())]
    assert len(pipelines) >= 2
    for path in pipelines:
        cfg = load_config(path)
        assert cfg.stages and cfg.stages[0].reader is not None
        # The run.yaml a run writes loads again as the same config (`winnow run RUN_DIR`).
        assert validate(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize("override,expected", [
    ("stages.synth.batch_size=64", "stage 'synth' (stages.6): a synth stage does not use `batch_size` "
                                   "(map and dedup stages do); remove it"),
    ("stages.synth.writer.compression=gzip", "stage 'synth' (stages.6): a synth stage does not use `writer`"),
    ("stages.dedup.resources.num_gpus=1", "stage 'dedup' (stages.2): a dedup stage does not use "
                                          "`resources.num_gpus` (map and synth stages do); remove it"),
    ("stages.dedup.actors=2", "stage 'dedup' (stages.2): a dedup stage does not use `actors`"),
    ("stages.dedup.steps=[]", "a dedup stage does not use `steps` (map stages do)"),
    ("stages.extract.dedup.bands=4", "a map stage does not use `dedup` (dedup stages do); remove it, or set "
                                     "`kind: dedup`"),
    ("stages.heuristics.synth.generator=webqa", "a map stage does not use `synth`"),
    ("stages.dedup.kind=mapp", "stage 'dedup' (stages.2): unknown kind 'mapp'; did you mean 'map'?"),
    ("stages.dedup.resources.num_cpu=2", "unknown key 'stages.2.resources.num_cpu'; did you mean 'num_cpus'?"),
    ("stages.synth.synth.generatr=llm", "stages.6.synth: unknown key 'generatr'; did you mean 'generator'?"),
    ("stages.synth.batchsize=3", "unknown key 'stages.6.batchsize'"),
])
def test_a_key_its_kind_does_not_use_is_an_error_naming_stage_and_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    assert expected in str(err.value)


def test_each_kind_gets_its_section_typed():
    from pipeline.dedup.params import DedupParams
    from pipeline.kinds import KINDS
    from pipeline.synth.params import SynthParams

    assert set(STAGE_MODELS) == set(KINDS)
    stages = {s.name: s for s in load_config(QUICKSTART).stages}
    assert isinstance(stages["dedup"], DedupStage) and isinstance(stages["dedup"].dedup, DedupParams)
    assert isinstance(stages["synth"], SynthStage) and isinstance(stages["synth"].synth, SynthParams)
    assert isinstance(stages["extract"], MapStage) and stages["extract"].steps[0]["type"] == "url_filter"
    assert stages["dedup"].resources.num_gpus == 0  # nothing in a dedup stage asks for a GPU node


def test_a_run_yaml_written_before_kinds_had_their_own_models_still_loads():
    """Older runs wrote every key on every stage into run.yaml, those their kind ignored included."""
    cfg = load_config(QUICKSTART)
    old = cfg.model_dump(mode="json")
    every = {"reader": None, "steps": [], "dedup": None, "synth": None, "batch_size": 256, "actors": None,
             "writer": WriterConfig().model_dump(mode="json")}
    for stage in old["stages"]:
        for key, value in every.items():
            stage.setdefault(key, value)
        stage["resources"].setdefault("num_gpus", 0.0)
    assert validate(old) == cfg
    # A config a person wrote gets no such leniency.
    with pytest.raises(ConfigError, match="a dedup stage does not use `actors`"):
        validate(old | {"stages": [*old["stages"][:2], {"name": "d", "kind": "dedup", "actors": None}]})


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
    # The synth stage's sampling takes the ranges every other entry point takes (train/sampling.py).
    ("stages.synth.synth.temperature=3", "temperature: Input should be less than or equal to 2"),
    ("stages.synth.synth.seed=-1", "seed: Input should be greater than or equal to 0"),
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
