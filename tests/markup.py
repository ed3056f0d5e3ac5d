"""What a Markdown body shows in the browser, for tests that check values stay literal.

Streamlit renders bodies, labels and st.table cells as GitHub-flavoured Markdown;
markdown-it-py (installed with the test tools, through rich) parses CommonMark plus tables
and strikethrough the same way. What it does not do is what Streamlit's frontend (1.67) does
after parsing, on each text node with its escapes already undone: GitHub's bare autolinks
(`https://...`, `www.x.y`, `a@b.c`) and `:emoji:` shortcodes. `Rendered.rewritten` finds
those in the text nodes, so a test fails where the browser would make a link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

EMPHASIS = ("strong", "em", "s", "link")
# The frontend's own patterns (mdast-util-gfm-autolink-literal, Streamlit's emoji check),
# a little wider where Python's regexes differ: a match here may be no link there, never
# the other way round.
AUTOLINK_URL = re.compile(r"(https?://|www(?=\.))([-.\w]+)", re.IGNORECASE)
AUTOLINK_EMAIL = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")
EMOJI = re.compile(r":(?!material/|streamlit:)(?=[\w+-]*[a-z])[\w+-]+:")  # not 08:30:00


@dataclass
class Rendered:
    """A body as shown: its text, the tags it made, the text inside emphasis or links."""

    text: str = ""
    tags: list[tuple[str, str]] = field(default_factory=list)  # links, images, raw HTML
    marked: list[str] = field(default_factory=list)  # text inside <strong>, <em>, <s>, <a>
    nodes: list[str] = field(default_factory=list)  # the text nodes, escapes undone

    def rewritten(self) -> list[str]:
        """The links and emoji Streamlit would make of the text nodes."""
        found: list[str] = []
        for node in self.nodes:
            for pattern in (AUTOLINK_URL, AUTOLINK_EMAIL, EMOJI):
                found += [m.group(0) for m in pattern.finditer(node)]
        return found


def rendered(body: str) -> Rendered:
    """Parse body as CommonMark (+ tables, strikethrough; raw HTML allowed), as a browser would.

    A text node is a run of text and escaped characters ("text_join" joins them, as the
    frontend's parser does): code spans, HTML, links and breaks end one.
    """
    markdown_it = pytest.importorskip("markdown_it")
    parser = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    out = Rendered()
    for block in parser.parse(body):
        if block.type == "html_block":
            out.tags.append(("html", block.content))
        elif block.type in ("code_block", "fence"):
            out.text += block.content
        depth = [0]
        for token in block.children or []:
            _visit(token, out, depth)
        if block.type == "inline" and block.children:
            out.text += "\n"
    out.text = out.text.rstrip("\n")
    return out


def _visit(token: Any, out: Rendered, depth: list[int]) -> None:
    kind = token.type
    if kind.endswith("_open") and kind[: -len("_open")] in EMPHASIS:
        depth[0] += 1
        if kind == "link_open":
            out.tags.append(("a", str(token.attrs.get("href", ""))))
    elif kind.endswith("_close") and kind[: -len("_close")] in EMPHASIS:
        depth[0] -= 1
    elif kind == "image":
        out.tags.append(("img", str(token.attrs.get("src", ""))))
    elif kind == "html_inline":
        out.tags.append(("html", token.content))
    elif kind in ("text", "code_inline", "softbreak", "hardbreak"):
        piece = " " if kind.endswith("break") else token.content
        out.text += piece
        if kind == "text":
            out.nodes.append(piece)
        if depth[0]:
            out.marked.append(piece)
