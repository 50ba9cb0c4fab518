"""The README's "use with timm / DiT / Hub / ONNX" section keeps its word: every Python block between its
`<!-- interop-snippets -->` and `<!-- /interop-snippets -->` markers runs as written (each on its own, in a fresh
working directory), and together they show the four uses."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- interop-snippets -->", "<!-- /interop-snippets -->"
# What the section must show: one call per use it promises.
USES = {
    "timm": "timm.create_model(",
    "DiT": "LightNetDiT(",
    "Hub": ".from_pretrained(",
    "ONNX": "torch.onnx.export(",
}


def snippets() -> list[str]:
    """The Python blocks of the section, in order; none when the README has no such section."""
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text:
        return []
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


SNIPPETS = snippets()
NO_SECTION = pytest.mark.skip(reason=f"README.md has no section between {BEGIN} and {END} (yet)")


@pytest.mark.skipif(not SNIPPETS, reason=f"README.md has no section between {BEGIN} and {END} (yet)")
def test_the_section_shows_each_use():
    code = "\n".join(SNIPPETS)
    assert not [use for use, call in USES.items() if call not in code]


@pytest.mark.slow
@pytest.mark.parametrize(
    "index",
    [pytest.param(i, id=f"snippet-{i + 1}") for i in range(len(SNIPPETS))] or [pytest.param(0, marks=NO_SECTION)],
)
def test_snippet_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a snippet saves lands here
    code = compile(SNIPPETS[index], f"README.md interop snippet {index + 1}", "exec")
    exec(code, {"__name__": "__readme__"})
