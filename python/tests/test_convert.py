"""tern.convert writes the same bytes as `tern convert`."""

import pytest

import tern
from conftest import hf_dir, run_tern


@pytest.mark.parametrize(
    "name,outtype,embd_type",
    [
        ("b158-sparse", "i2_s", "f16"),
        ("b158-packed", "tq2_0", "q8_0"),
        ("bitnet-silu", "tq1_0", "q6_k"),
        ("tern-shakespeare", "i2_s", "f32"),
    ],
)
def test_convert_is_byte_identical_to_the_cli(tmp_path, name, outtype, embd_type):
    ours = tmp_path / "python.gguf"
    theirs = tmp_path / "cli.gguf"
    out = tern.convert(hf_dir(name), ours, outtype=outtype, embd_type=embd_type)
    assert out == str(ours)
    run_tern("convert", str(hf_dir(name)), "--outfile", str(theirs), "--outtype", outtype, "--embd-type", embd_type)
    data = ours.read_bytes()
    assert data[:4] == b"GGUF"
    assert data == theirs.read_bytes()


def test_default_output_name_and_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tern.convert(hf_dir("b158-bf16"))
    assert out == "b158-bf16-i2_s.gguf"
    first = (tmp_path / out).read_bytes()
    # An existing output needs force=True, and is then rewritten the same.
    with pytest.raises(FileExistsError):
        tern.convert(hf_dir("b158-bf16"))
    assert tern.convert(hf_dir("b158-bf16"), force=True) == out
    assert (tmp_path / out).read_bytes() == first
    assert not list(tmp_path.glob("*.partial"))
