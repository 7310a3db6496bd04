"""Stage fingerprints follow the code that runs: a stage's modules and every first-party module they import."""

from __future__ import annotations

import pathlib

import pytest

from pipeline.config import load_config
from pipeline.fingerprint import stage_fingerprint
from tests.conftest import ROOT

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def fingerprints() -> dict[str, str]:
    """Every quickstart stage's fingerprint, chained as the runner chains them."""
    cfg = load_config(QUICKSTART, ["input=/data/in.warc.gz"])
    out, previous = {}, ""
    for index, stage in enumerate(cfg.stages):
        previous = stage_fingerprint(stage, previous, ["/data/in.warc.gz"] if index == 0 else None)
        out[stage.name] = previous
    return out


def edited(monkeypatch: pytest.MonkeyPatch, relative: str) -> None:
    """Make every reader of the file at `relative` (under the repository) see one more line in it."""
    target = (ROOT / relative).resolve()
    assert target.is_file(), target
    read_bytes = pathlib.Path.read_bytes

    def patched(self: pathlib.Path) -> bytes:
        data = read_bytes(self)
        return data + b"\n# edited\n" if self.resolve() == target else data

    monkeypatch.setattr(pathlib.Path, "read_bytes", patched)


@pytest.mark.parametrize("helper,stage", [
    ("filters/pii_phone.py", "pii"),
    ("filters/pii_ner.py", "pii"),
    ("filters/quality_features.py", "quality"),
    ("filters/extract_trim.py", "extract"),
    ("filters/warc_framing.py", "extract"),  # the reader's, for the first stage
    ("pipeline/dedup/components.py", "dedup"),
    ("filters/decont.py", "synth"),  # the synth QC's n-gram check
    ("filters/langid.py", "extract"),
])
def test_editing_a_helper_recomputes_its_stage_and_only_what_follows(monkeypatch, helper, stage):
    before = fingerprints()
    edited(monkeypatch, helper)
    after = fingerprints()
    names = list(before)
    first = names.index(stage)
    assert [before[n] == after[n] for n in names] == [i < first for i in range(len(names))], \
        f"editing {helper} should recompute {names[first:]}"


def test_editing_a_step_recomputes_only_the_stages_that_run_it(monkeypatch):
    before = fingerprints()
    edited(monkeypatch, "filters/heuristics.py")  # gopher_* in `heuristics`, c4 and fineweb in `line_filters`
    after = fingerprints()
    assert before["extract"] == after["extract"]
    assert all(before[n] != after[n] for n in ("heuristics", "dedup", "line_filters", "quality", "pii", "synth"))


def test_closures_of_the_shipped_steps_and_kinds():
    from pipeline import sources
    cfg = {s.name: s for s in load_config(QUICKSTART).stages}
    from pipeline.fingerprint import stage_modules

    def closure(name: str) -> set[str]:
        return set(sources.closure(tuple(stage_modules(cfg[name]))))

    assert {"filters.pii", "filters.pii_phone", "filters.pii_ner"} <= closure("pii")
    assert {"filters.quality", "filters.quality_features"} <= closure("quality")
    synth = closure("synth")
    qc_imports = {m if sources.module_file(f"{m}.{a}") is None else f"{m}.{a}"
                  for m, a in sources.imports("pipeline.synth.qc") if sources.module_file(m) is not None}
    assert qc_imports and qc_imports <= synth, qc_imports - synth
    # The step registry is hashed, but a stage depends only on the steps it runs.
    assert "filters" in closure("pii") and "filters.quality" not in closure("pii")
    assert "filters.pii" not in closure("extract") and "pipeline.synth.qc" not in closure("extract")
    # Validation code is not shard code: the resolved config is in the fingerprint instead.
    assert not any("pipeline.config" in closure(name) for name in cfg)


def test_imports_are_found_statically(tmp_path, monkeypatch):
    """Relative imports, imports inside functions and re-exports count; type-only imports do not."""
    from pipeline import sources

    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from demo.helper import util\nREGISTRY = {'util': util}\n")
    (pkg / "helper.py").write_text("def util():\n    from .sub import deep\n    return deep\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from ..typed import T\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import demo.unused\n")
    (pkg / "unused.py").write_text("")
    (pkg / "other.py").write_text("")
    (pkg / "stage.py").write_text("from demo import REGISTRY, util\nimport json\n")
    for fn in (sources.first_party, sources.module_file, sources._parsed, sources.imports, sources._registry_only,
               sources.closure):
        fn.cache_clear()
    monkeypatch.setattr(sources, "first_party", lambda: {"demo": pkg})
    try:
        found = sources.closure(("demo.stage",))
    finally:
        monkeypatch.undo()
        for fn in (sources.module_file, sources._parsed, sources.imports, sources._registry_only, sources.closure):
            fn.cache_clear()
    assert found == ("demo", "demo.helper", "demo.stage", "demo.sub", "demo.sub.deep", "demo.typed")
    with pytest.raises(ValueError, match="json: not a module of Winnow's own packages"):
        sources.closure(("json",))


def test_a_changed_prompt_template_recomputes_the_synth_stage(tmp_path):
    template = tmp_path / "qa.j2"
    template.write_text((ROOT / "configs" / "synth" / "paragraph_qa.j2").read_text())
    synth = ('stages.synth.synth={generator: llm, endpoint: "http://127.0.0.1:9/v1", model: m, '
             f'recipes: [{{name: paragraph_qa, template: "{template}"}}]}}')

    def synth_fingerprint() -> str:
        stage = load_config(QUICKSTART, [synth]).stages[-1]
        return stage_fingerprint(stage, "previous")

    before = synth_fingerprint()
    assert synth_fingerprint() == before
    template.write_text(template.read_text() + "\nAnswer in one sentence.\n")
    assert synth_fingerprint() != before
