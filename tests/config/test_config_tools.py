"""The generated reference is current, and `zerolib config check` reports as documented."""
import json
import pathlib

from config_helpers import FIXTURES
from zerolib.config import docgen
from zerolib.config.check import main

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_up_to_date():
    assert DOCS.read_text() == docgen.generate(), (
        "docs/config.md is stale: run `python -m zerolib.config.docgen > docs/config.md`")


def test_docs_name_every_block_and_default():
    text = docgen.generate()
    for heading in ("## `zero_optimization`", "## `zero_optimization.offload_param`",
                    '## `optimizer.params` (type "SGD")', '## `scheduler.params` (type "OneCycle")',
                    "## `comm`"):
        assert heading in text
    assert "| `gradient_clipping` | float (≥ 0) | `1.0` |" in text
    assert "| `stage` | 0 \\| 1 \\| 2 \\| 3 | `0` |" in text


def test_check_prints_resolved_json_and_warnings(capsys):
    assert main([str(FIXTURES / "legacy_spellings.json"), "--world_size", "2",
                 "--allow_unimplemented"]) == 0
    out, err = capsys.readouterr()
    resolved = json.loads(out)
    assert resolved["train_batch_size"] == 16 and resolved["bf16"]["enabled"] is True
    assert "warning: bfloat16 is deprecated; write bf16" in err


def test_check_prints_deprecations_and_the_resolved_config(capsys):
    assert main([str(FIXTURES / "legacy_spellings.json"), "--world_size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "warning: bfloat16 is deprecated" in err
    assert '"device": "cpu"' in out


def test_check_fails_on_a_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"train_batch_size": 8, "zero_optimization": {"stage": 7}}')
    assert main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: zero_optimization.stage: Input should be 0, 1, 2 or 3 (got 7)")


def test_check_resolves_for_the_world_size_given(capsys):
    bert = FIXTURES / "deepspeed_zero1_bert.json"
    assert main([str(bert), "--world_size", "3"]) == 1  # 64 is not 8 × gas × 3
    assert "error: gradient_accumulation_steps: cannot be derived" in capsys.readouterr().err
    assert main([str(bert), "--world_size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["gradient_accumulation_steps"] == 2
    assert main(["--world_size", "x", str(bert)]) == 2  # argparse's usage error


def test_check_rejects_unimplemented_unless_allowed(capsys):
    config = FIXTURES / "hf_trainer_zero3.json"
    assert main([str(config)]) == 1
    assert "error: train_batch_size: no batch size given" in capsys.readouterr().err
