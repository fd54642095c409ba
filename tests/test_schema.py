"""The published JSON Schema: in sync with the registry, valid, and accepting every spec."""

import json

import jsonschema
import pytest
from yamlnet.compiler.load import load_spec_source

from yamlnet import published_schema

from .conftest import SPECS, all_specs


def test_committed_schema_is_in_sync():
    committed = json.loads((SPECS / "schema.json").read_text())
    assert committed == json.loads(json.dumps(published_schema())), (
        "specs/schema.json is stale: run `yamlnet schema --out specs/schema.json`"
    )


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(published_schema())


@pytest.mark.parametrize("path", all_specs(), ids=lambda p: str(p.relative_to(SPECS)))
def test_every_spec_validates_against_published_schema(path):
    validator = jsonschema.Draft202012Validator(json.loads((SPECS / "schema.json").read_text()))
    data = load_spec_source(path).main.data
    errors = [e.message for e in validator.iter_errors(data)]
    assert errors == []


@pytest.mark.parametrize("path", all_specs(), ids=lambda p: str(p.relative_to(SPECS)))
def test_every_spec_has_the_editor_modeline(path):
    assert path.read_text().splitlines()[0].startswith("# yaml-language-server: $schema=")


def test_schema_knows_op_arguments():
    defs = published_schema()["$defs"]
    conv = defs["op_Conv2d"]["properties"]
    assert {"out_channels", "kernel_size", "stride", "padding", "bias"} <= set(conv)
    assert "inferred from the input shape" in conv["in_channels"]["description"]
