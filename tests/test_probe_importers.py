"""Importers: CounterFact and zsRE records become probes; a bad record names its line and field, the rest load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editaudit.probing.format import Probe, ProbeLoadError, dump_probes, load_probes
from editaudit.probing.importers import detect_format, import_file

FIX = Path(__file__).parent / "fixtures" / "probes"


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_counterfact_records_map_to_probes():
    errors: list[str] = []
    probes = import_file(FIX / "counterfact_small.json", errors=errors)
    assert [p.id for p in probes] == ["cf-0", "cf-1", "cf-5"]
    p = probes[0]
    assert (p.subject, p.target_true, p.target_new, p.relation, p.kind) == ("Danielle Darrieux", "French", "English", "P103", "edited")
    assert p.text == "The mother tongue of Danielle Darrieux is"
    assert len(p.paraphrases) == 2 and p.neighbourhood == ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"]
    assert p.attribute_prompts[0].startswith("J.R.R. Tolkien") and len(p.generation_prompts) == 2
    assert p.meta == {"source": "counterfact", "case_id": 0, "pararel_idx": 2796}
    assert probes[1].neighbourhood == [] and probes[1].paraphrases == ["Glenn Gould is known for playing the"]


def test_counterfact_errors_name_line_and_field():
    path = FIX / "counterfact_small.json"
    errors: list[str] = []
    import_file(path, "counterfact", errors)
    assert len(errors) == 3
    rec2 = _line_of(path, '"case_id": 2') - 1  # the record's opening brace
    rec3 = _line_of(path, '"case_id": 3') - 1
    rec4 = _line_of(path, '"case_id": 4') - 1
    assert errors[0] == f"counterfact_small.json:{rec2}: field 'requested_rewrite.target_new.str' is missing"
    assert errors[1].startswith(f"counterfact_small.json:{rec3}: field 'requested_rewrite.prompt'")
    assert errors[2] == f"counterfact_small.json:{rec4}: field 'paraphrase_prompts' must be a list of strings"


def test_zsre_records_map_to_probes():
    errors: list[str] = []
    probes = import_file(FIX / "zsre_small.jsonl", errors=errors)
    assert [p.subject for p in probes] == ["Watts Humphrey", "Ramalinaceae", "Paris"]
    p = probes[0]
    assert p.text == "What university did Watts Humphrey attend?"
    assert (p.target_true, p.target_new, p.kind) == ("Illinois Institute of Technology", "University of Michigan", "edited")
    assert p.paraphrases == ["What university did Watts Humphrey take part in?"]
    assert p.neighbourhood == ["nq question: who played desmond doss father in hacksaw ridge"]
    assert p.neighbourhood_targets == ["Hugo Weaving"]
    assert probes[2].neighbourhood == [] and probes[2].neighbourhood_targets == []


def test_zsre_errors_name_line_and_field():
    errors: list[str] = []
    import_file(FIX / "zsre_small.jsonl", "zsre", errors)
    assert errors == [
        "zsre_small.jsonl:3: field 'answers' must hold at least one non-empty answer",
        "zsre_small.jsonl:4: field 'loc_ans' is missing",
        "zsre_small.jsonl:5: not valid JSON (Expecting value)",
        "zsre_small.jsonl:6: field 'src' does not contain the subject 'Marl'",
    ]


def test_without_an_error_list_the_first_bad_record_raises():
    with pytest.raises(ProbeLoadError, match=r"zsre_small.jsonl:3: field 'answers'"):
        import_file(FIX / "zsre_small.jsonl")


def test_format_detection_and_jsonl_counterfact(tmp_path):
    assert detect_format(FIX / "counterfact_small.json") == "counterfact"
    assert detect_format(FIX / "zsre_small.jsonl") == "zsre"
    recs = json.loads((FIX / "counterfact_small.json").read_text())
    jl = tmp_path / "cf.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in recs[:2]) + "\n")
    assert [p.id for p in import_file(jl)] == ["cf-0", "cf-1"]
    assert [p.id for p in import_file(FIX / "counterfact_small.json", errors=[], limit=1)] == ["cf-0"]


def test_broken_json_array_keeps_what_came_before(tmp_path):
    good = json.loads((FIX / "counterfact_small.json").read_text())[0]
    path = tmp_path / "cf.json"
    path.write_text("[\n" + json.dumps(good) + ",\n{\"case_id\": 9, oops\n]\n")
    errors: list[str] = []
    probes = import_file(path, "counterfact", errors)
    assert [p.id for p in probes] == ["cf-0"]
    assert errors and errors[0].startswith("cf.json:3: not valid JSON")


def test_imported_probes_round_trip_through_jsonl(tmp_path):
    probes = import_file(FIX / "counterfact_small.json", errors=[]) + import_file(FIX / "zsre_small.jsonl", errors=[])
    out = tmp_path / "probes.jsonl"
    dump_probes(probes, out)
    again = load_probes(out)
    assert again == probes
    assert detect_format(out) == "probes"


def test_probe_format_checks_new_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    base = {"id": "x", "subject": "France", "prompt": "The capital of {} is", "target_true": "Paris"}
    path.write_text("\n".join(json.dumps(r) for r in [
        {**base, "neighbourhood": ["a", "b"], "neighbourhood_targets": ["c"]},
        {**base, "meta": {"k": [1]}},
        {**base, "attribute_prompts": "nope"},
        base,
    ]) + "\n")
    errors: list[str] = []
    probes = load_probes(path, errors)
    assert len(probes) == 1 and isinstance(probes[0], Probe)
    assert errors[0].startswith("p.jsonl:1: field 'neighbourhood_targets'")
    assert errors[1].startswith("p.jsonl:2: field 'meta'")
    assert errors[2].startswith("p.jsonl:3: field 'attribute_prompts'")


def test_cli_import_lists_skipped_records(tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    out = tmp_path / "zsre.jsonl"
    res = CliRunner().invoke(app, ["probes", "import", str(FIX / "zsre_small.jsonl"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "zsre_small.jsonl:3" in res.output and len(load_probes(out)) == 3
    res = CliRunner().invoke(app, ["probes", "import", str(FIX / "zsre_small.jsonl"), "-o", str(out), "--strict"])
    assert res.exit_code == 2 and "zsre_small.jsonl:3" in res.output


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b'{"subject": "caf\xe9"}\n', b'[{"case_id": "\xff"}]'],
                         ids=["binary", "latin-1 jsonl", "latin-1 array"])
def test_a_file_that_is_not_utf8_names_itself(tmp_path, content):
    """``probe -p FILE`` or ``scan --facts FILE`` on a binary file was an unexpected UnicodeDecodeError."""
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(ProbeLoadError, match="bad.jsonl: not UTF-8"):
        import_file(bad)
    res = CliRunner().invoke(app, ["probes", "import", str(bad), "-o", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 2 and "bad.jsonl: not UTF-8 text" in res.stderr and "Decode" not in res.stderr, res.stderr
