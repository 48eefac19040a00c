"""The output formats are one table (image/formats.py): the build writes from it, the config and --format
check against it, `invoke build --help` lists it and docs/bases.md shows it; a format added as one row and
one converter is written by the real build."""
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image import formats
from image.build import build_appliance, check_formats, write_format
from image.config import load_config
from image.errors import UserError
from image.formats import FORMATS_TABLE, OutputFormat, converter

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/bases.md"
CONVERTER_PARAMETERS = ["cfg", "raw", "out", "runner", "signing", "test_reason"]


def doc_rows() -> list[list[str]]:
    """The cells of docs/bases.md's formats table (the one headed `| format | file |`)."""
    text = DOC.read_text()
    table = text[text.index("| format | file |"):].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in table]


def test_the_docs_table_is_the_formats_table():
    expected = [[row.name, "." + row.extension, row.manifest, ", ".join(row.importers)] for row in FORMATS_TABLE]
    assert doc_rows() == expected


def test_every_row_names_a_converter_the_build_can_call():
    for row in FORMATS_TABLE:
        function = converter(row.name)
        assert list(inspect.signature(function).parameters) == CONVERTER_PARAMETERS, row.name
    assert [row.name for row in FORMATS_TABLE if row.moves_raw] == ["raw"]


def test_config_and_format_option_check_against_the_table():
    names = ", ".join(row.name for row in FORMATS_TABLE)
    with pytest.raises(UserError, match=rf"^--format: 'iso' is not one of: {re.escape(names)}$"):
        check_formats(["qcow2", "iso"])
    with pytest.raises(UserError, match=rf"image\.formats: \['iso'\] is not a non-empty list of: {re.escape(names)}"):
        load_config(overrides={"image": {"formats": ["iso"]}})
    assert load_config(overrides={"image": {"formats": [r.name for r in FORMATS_TABLE]}}).image.formats == \
        tuple(r.name for r in FORMATS_TABLE)


def test_invoke_help_lists_every_format_with_its_importers():
    invoke = Path(sys.executable).parent / "invoke"
    if not invoke.exists():
        pytest.skip("invoke is not installed in this venv (requirements.txt)")
    shown = subprocess.run([str(invoke), "--help", "build"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    flat = " ".join(shown.split())
    assert formats.help_text() in flat
    for row in FORMATS_TABLE:
        assert f"{row.name} ({', '.join(row.importers)})" in flat


def write_toy(cfg, raw, out, runner, signing=None, test_reason=None):
    """A format's converter: the raw disk's first bytes behind a header (the real Runner copies)."""
    runner.run(["cp", raw, out])
    with open(out, "r+b") as f:
        f.write(b"TOYDISK\n")


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="the build's preflight wants qemu-img (qemu-utils)")
def test_a_format_added_as_one_row_is_written_by_the_build(tmp_path, monkeypatch):
    from image import bases
    from tests.unit.test_base_registry import toy_module  # a base that needs no root and no mirror
    row = OutputFormat("toyfmt", "toy", f"{__name__}:write_toy", "toy disk with a header", ("nothing",))
    monkeypatch.setitem(formats.FORMATS, "toyfmt", row)
    bases.register("toy", toy_module())
    try:
        cfg = load_config(overrides={"image": {"base": "toy"}, "artifacts": {
            "step_ca": {"path": "/usr/bin/true"}, "step_cli": {"enabled": False}}})
        published = build_appliance(cfg, formats=["toyfmt"], dist_dir=tmp_path / "dist",
                                    build_dir=tmp_path / "build", out=open("/dev/null", "w"))
    finally:
        bases.unregister("toy")
    toy_file, manifest_file = published
    assert toy_file.suffix == ".toy" and toy_file.read_bytes().startswith(b"TOYDISK\n")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["output_formats"] == {toy_file.name: {"format": "toyfmt", "is": "toy disk with a header"}}


def test_vhdx_stays_a_row_with_its_writer(tmp_path):
    assert check_formats(["vhdx"]) == ["vhdx"]
    with pytest.raises(UserError, match="--format: 'vhdy' is not one of"):
        write_format("vhdy", None, tmp_path / "raw", tmp_path / "out", None, {})
