# SPDX-License-Identifier: Apache-2.0
"""The documents' report excerpts against real output: the demo runs
(text and JSON, as `make docs-examples` runs it) and each excerpt in
kernel_delay.rst and README.md must still have the shape of what the
tool prints: the same section names, column headers and report lines,
and, in JSON, the same keys.  When the format changes, this fails until
`sudo make docs-examples` has rewritten the excerpts."""

import json
import os
import sys

import pytest

from conftest import TOP

sys.path.insert(0, os.path.join(TOP, "tests", "tools"))

import docs_examples  # noqa: E402


@pytest.fixture(scope="module")
def real():
    """The excerpts of this run of the demo, as make docs-examples would
    write them."""
    return docs_examples.generate()


def documented(path):
    with open(path, encoding="utf-8") as f:
        return docs_examples.shown(f.read(), path)


@pytest.mark.parametrize("path", docs_examples.DOCUMENTS,
                         ids=os.path.basename)
def test_text_examples_have_the_shape_of_real_output(real, path):
    examples = documented(path)
    assert examples
    for name, lines in examples.items():
        if name == "json-sample":
            continue
        optional = docs_examples.OPTIONAL.get(name, ())
        doc, now = docs_examples.shape(lines, optional), docs_examples.shape(
            real[name], optional)
        assert doc, name
        assert doc == now, (
            "{} of {} drifted from real output (run sudo make "
            "docs-examples): only in the document {}, only in real output "
            "{}".format(name, os.path.basename(path), sorted(doc - now),
                        sorted(now - doc)))


def test_json_example_has_every_real_key(real):
    doc = json.loads("\n".join(documented(docs_examples.DOCUMENTS[0])[
        "json-sample"]))
    now = json.loads("\n".join(real["json-sample"]))
    assert docs_examples.key_drift(doc, now) == []
    assert doc["type"] == "sample" and "budget" in doc["threads"][0]
