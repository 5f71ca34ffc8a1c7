"""Option defaults live only in the target files: every option a convert/validate template reads
is declared in the [options] of each target that uses the template, and no template carries a
default of its own (ekit.Options fails loudly on a missing key instead)."""

import re

import pytest

from edgekiln.resources import data_dir
from edgekiln.targets import all_targets

READ = re.compile(r'\b(?:opts|OPTIONS|options)\["([a-z0-9_]+)"\]')
DEFAULTED = re.compile(r'\b(?:opts|OPTIONS|options)\.get\(')


def templates_of(target):
    names = {target.convert, target.validate}
    for via in target.via.values():
        names.update(v for k, v in via.items() if k in ("convert", "validate"))
    return sorted(names)


@pytest.mark.parametrize("target", sorted(all_targets().values(), key=lambda t: t.name), ids=lambda t: t.name)
def test_every_option_a_template_reads_is_in_the_target_file(target):
    root = data_dir("converters")
    for name in templates_of(target):
        text = (root / name).read_text()
        assert not DEFAULTED.search(text), f"{name} reads an option with a default of its own"
        missing = sorted(set(READ.findall(text)) - set(target.options))
        assert not missing, f"{name} reads options {missing} that targets/{target.name}.toml does not declare"


def test_a_missing_option_fails_loudly(tmp_path, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(data_dir("converters")))
    import ekit

    opts = ekit.Options({"present": 1})
    assert opts["present"] == 1
    with pytest.raises(SystemExit) as exc:
        opts["absent"]
    assert exc.value.code == ekit.EXIT_USER_ERROR
    assert "option 'absent' is not set" in capsys.readouterr().err
