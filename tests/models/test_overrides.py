"""``--set KEY=VALUE``: one syntax for every command, checked as the command line is parsed."""
import pytest

from vitlab.models.overrides import SET_HELP, parse_overrides, parse_value
from vitlab.tools import attention, bench, onnx_export


@pytest.mark.parametrize("text, value", [
    ("6", 6), ("0.5", 0.5), ("1e-5", 1e-5), ("true", True), ("False", False), ("null", None), ("none", None),
    ("None", None), ("conv", "conv"), ("[32, 48]", [32, 48]), ("32,48", (32, 48)), ("8, 16,", (8, 16)),
    ("{layers: 2}", {"layers": 2}), ("'a,b'", "a,b"),
])
def test_values_are_yaml(text, value):
    assert parse_value(text) == value


def test_dotted_keys_build_the_mapping():
    assert parse_overrides(["depth=2", "tokenizer=cct", "tokenizer_options.layers=2", "tokenizer_options.kernel=5",
                            "depth=3"]) == {"depth": 3, "tokenizer": "cct",
                                            "tokenizer_options": {"layers": 2, "kernel": 5}}
    assert parse_overrides(["tokenizer_options={layers: 1}", "tokenizer_options.kernel=3"]) == \
        {"tokenizer_options": {"layers": 1, "kernel": 3}}
    assert parse_overrides(None) == {} and parse_overrides([]) == {}


@pytest.mark.parametrize("item, match", [
    ("depth", r"^--set expects KEY=VALUE, got 'depth'$"),
    ("=3", r"^--set expects KEY=VALUE"),
    ("dpeth=3", r"^--set dpeth=3: unknown config key 'dpeth'; valid keys: \[.*'depth'.*\]$"),
    ("cct_layers=3", r"^cct_layers was renamed: use tokenizer_options=\{'layers': 3\}"),
    ("depth=[1", r"^cannot read '\[1' as a YAML value"),
])
def test_bad_items_are_one_line_errors(item, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_overrides([item])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("command", [attention, bench, onnx_export])
def test_every_command_takes_the_same_set(command, capsys):
    parser = command.build_parser()
    action = next(a for a in parser._actions if "--set" in a.option_strings)
    assert action.help == SET_HELP and action.metavar == "KEY=VALUE"
    base = {attention: ["--model", "vit_micro_patch4_28", "--images", "x.png"], bench: [],
            onnx_export: ["--model", "vit_micro_patch4_28", "--out", "m.onnx"]}[command]
    args = parser.parse_args(base + ["--set", "depth=2", "--set", "tokenizer_options.layers=2"])
    assert parse_overrides(args.set) == {"depth": 2, "tokenizer_options": {"layers": 2}}
    with pytest.raises(SystemExit) as exc:  # a usage error, before any model is built
        parser.parse_args(base + ["--set", "dpeth=2"])
    assert exc.value.code == 2 and "unknown config key 'dpeth'" in capsys.readouterr().err
