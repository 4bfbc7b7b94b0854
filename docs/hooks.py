"""mkdocs hooks: the configuration and command-line references, generated at build time.

A page holding ``<!-- unitrec:config-reference -->`` gets a table per section of the
config, read from the pydantic schema (``unitrec.schema``); one holding
``<!-- unitrec:cli-reference -->`` gets every subcommand's ``--help``, from the parser
``unitrec`` itself uses. Nothing here is written by hand, so the references cannot
drift from the code.
"""

from __future__ import annotations

import io
import typing
from contextlib import redirect_stdout
from typing import Any

CONFIG_MARK = "<!-- unitrec:config-reference -->"
CLI_MARK = "<!-- unitrec:cli-reference -->"


def _type(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "unitrec.schema.", "pydantic.types.", "annotated_types.", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    return "`null`" if value is None else f"`{value!r}`".replace("|", "\\|")


def config_reference() -> str:
    from pydantic import BaseModel

    from unitrec import schema

    sections = [("A recording (`kind: record`, the default)", schema.Config),
                ("A synthesis (`kind: visualize` or `kind: evolve`)", schema.ClosedLoopConfig)]
    seen: set[type] = set()
    out = []

    def table(title: str, model: type[BaseModel], level: str) -> None:
        seen.add(model)
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        out.append(f"\n{level} {title}\n\n{doc}\n\n| key | type | default |\n| --- | --- | --- |\n")
        nested = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            out.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} |\n")
            for arg in typing.get_args(field.annotation) or (field.annotation,):
                for inner in typing.get_args(arg) or (arg,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                        nested.append((key, inner))
        for key, inner in nested:
            if inner not in seen:
                table(f"`{key}:` ({inner.__name__})", inner, "###")

    for title, model in sections:
        table(title, model, "##")
    return "".join(out)


def cli_reference() -> str:
    from unitrec.cli import _parser

    parser = _parser()
    out = ["\n## `unitrec`\n\n```text\n", parser.format_help(), "```\n"]
    for action in parser._subparsers._group_actions:  # the subcommands, in the order --help lists them
        for name, sub in action.choices.items():
            buffer = io.StringIO()
            with redirect_stdout(buffer):
                sub.print_help()
            out += [f"\n## `unitrec {name}`\n\n```text\n", buffer.getvalue(), "```\n"]
    return "".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CONFIG_MARK in markdown:
        markdown = markdown.replace(CONFIG_MARK, config_reference())
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    return markdown
