"""Real-world reply shapes (qwen3-coder and friends) and what the relay must make of them.

Sources: opencode-contract §6 (the captured fixture), model-endpoints §3/§4 (the chat template's
output, ollama #16686/#17353/#18530, opencode #4428/#33959, llama.cpp #15012, QwenLM/Qwen3-Coder
#475/#480, opencode #6918), vLLM's qwen3_coder parser behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str
    reply: str
    calls: list[tuple[str, dict[str, Any]]]
    text: str  # content left after repair
    rejected: dict[str, int] = field(default_factory=dict)
    # Streamed, the call's first delta went out before the markup failed: the client holds one
    # call whose arguments never parse (it cannot run it), and the markup follows as text.
    opened: bool = False


CANONICAL = (
    "<tool_call>\n<function=write>\n<parameter=filePath>\n/workspace/textcall.py\n</parameter>\n"
    "<parameter=content>\nprint('from text')\n</parameter>\n</function>\n</tool_call>"
)
CODE = 'if a < b and b > c:\n    html = "<div></div>"  # </ and <x>\n    s = "<function=x>" if a</b else 0\n'

CASES: list[Case] = [
    Case(
        "contract-fixture",
        CANONICAL,
        [("write", {"filePath": "/workspace/textcall.py", "content": "print('from text')"})],
        "",
    ),
    Case(
        "prose-then-call",
        "I'll read the README first.\n<tool_call>\n<function=read>\n<parameter=filePath>\nREADME.md\n"
        "</parameter>\n<parameter=limit>\n200\n</parameter>\n</function>\n</tool_call>",
        [("read", {"filePath": "README.md", "limit": 200})],
        "I'll read the README first.\n",
    ),
    Case(  # opencode #4428: no opener, no </function>, value inline
        "bare-function-unclosed",
        "<function=read>\n<parameter=file_path>/etc/hostname</parameter>",
        [("read", {"file_path": "/etc/hostname"})],
        "",
    ),
    Case(  # opencode #33959 / ollama #16686: bare <function=...> with closers
        "bare-function-closed",
        "<function=task>\n<parameter=description>\nExplore\n</parameter>\n<parameter=prompt>\nFind the tests\n"
        "</parameter>\n<parameter=subagent_type>\ngeneral\n</parameter>\n</function>\n</tool_call>",
        [("task", {"description": "Explore", "prompt": "Find the tests", "subagent_type": "general"})],
        "",
    ),
    Case(  # ollama #18530: prose preamble, opener missing
        "preamble-no-opener",
        "Let me check the directory.\n\n<function=bash>\n<parameter=command>\nls -la\n</parameter>\n"
        "<parameter=description>\nList files\n</parameter>\n</function>\n</tool_call>\n",
        [("bash", {"command": "ls -la", "description": "List files"})],
        "Let me check the directory.\n\n",
    ),
    Case(
        "two-calls",
        "<tool_call>\n<function=read>\n<parameter=filePath>\na.py\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=read>\n<parameter=filePath>\nb.py\n</parameter>\n<parameter=offset>\n10\n"
        "</parameter>\n</function>\n</tool_call>",
        [("read", {"filePath": "a.py"}), ("read", {"filePath": "b.py", "offset": 10})],
        "",
    ),
    Case(
        "json-array-parameter",
        '<tool_call>\n<function=todowrite>\n<parameter=todos>\n[{"content": "Write tests", "status": '
        '"pending", "priority": "high"}]\n</parameter>\n</function>\n</tool_call>',
        [("todowrite", {"todos": [{"content": "Write tests", "status": "pending", "priority": "high"}]})],
        "",
    ),
    Case(  # QwenLM/Qwen3-Coder #480: Python-repr structured values
        "python-literal-array",
        "<tool_call>\n<function=todowrite>\n<parameter=todos>\n[{'content': 'x', 'status': 'pending', "
        "'priority': 'low', 'done': True}]\n</parameter>\n</function>\n</tool_call>",
        [("todowrite", {"todos": [{"content": "x", "status": "pending", "priority": "low", "done": True}]})],
        "",
    ),
    Case(
        "code-with-angle-brackets",
        f"<tool_call>\n<function=write>\n<parameter=filePath>\n/w/x.py\n</parameter>\n<parameter=content>\n"
        f"{CODE}</parameter>\n</function>\n</tool_call>",
        [("write", {"filePath": "/w/x.py", "content": CODE.removesuffix("\n")})],
        "",
    ),
    Case(
        "json-string-parameter-stays-string",  # a string param holding JSON text is not decoded
        "<tool_call>\n<function=write>\n<parameter=filePath>\n/w/p.json\n</parameter>\n<parameter=content>\n"
        '{"a": 1, "b": [true, null]}\n</parameter>\n</function>\n</tool_call>',
        [("write", {"filePath": "/w/p.json", "content": '{"a": 1, "b": [true, null]}'})],
        "",
    ),
    Case(
        "trailing-text",
        "<tool_call>\n<function=glob>\n<parameter=pattern>\n**/*.py\n</parameter>\n</function>\n</tool_call>\n"
        "I will look at the results next.",
        [("glob", {"pattern": "**/*.py"})],
        "I will look at the results next.",
    ),
    Case(
        "typed-scalars",
        "<tool_call>\n<function=edit>\n<parameter=filePath>\ncalc.py\n</parameter>\n<parameter=oldString>\n"
        "return a - b\n</parameter>\n<parameter=newString>\nreturn a + b\n</parameter>\n<parameter=replaceAll>\n"
        "true\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=webfetch>\n<parameter=url>\n"
        "https://example.com\n</parameter>\n<parameter=timeout>\n30.5\n</parameter>\n</function>\n</tool_call>",
        [
            (
                "edit",
                {"filePath": "calc.py", "oldString": "return a - b", "newString": "return a + b", "replaceAll": True},
            ),
            ("webfetch", {"url": "https://example.com", "timeout": 30.5}),
        ],
        "",
    ),
    Case(  # opencode #6918: object-looking text for a string parameter stays the exact string
        "object-text-in-string-param",
        "<tool_call>\n<function=edit>\n<parameter=filePath>\nc.json\n</parameter>\n<parameter=oldString>\n"
        '{"x": 1}\n</parameter>\n<parameter=newString>\n{"x": 2}\n</parameter>\n</function>\n</tool_call>',
        [("edit", {"filePath": "c.json", "oldString": '{"x": 1}', "newString": '{"x": 2}'})],
        "",
    ),
    Case(
        "missing-parameter-close",
        "<tool_call>\n<function=bash>\n<parameter=command>\nls\n<parameter=description>\nList\n</parameter>\n"
        "</function>\n</tool_call>",
        [("bash", {"command": "ls", "description": "List"})],
        "",
    ),
    Case(
        "inline-values-no-newlines",
        "<tool_call><function=read><parameter=filePath>/a b/c.py</parameter><parameter=limit>5</parameter>"
        "</function></tool_call>",
        [("read", {"filePath": "/a b/c.py", "limit": 5})],
        "",
    ),
    Case(
        "only-one-newline-stripped",
        "<tool_call>\n<function=write>\n<parameter=filePath>\nx\n</parameter>\n<parameter=content>\n\n"
        "body\n\n</parameter>\n</function>\n</tool_call>",
        [("write", {"filePath": "x", "content": "\nbody\n"})],
        "",
    ),
    Case(  # two functions inside one <tool_call> block
        "two-functions-one-block",
        "<tool_call>\n<function=read>\n<parameter=filePath>\na\n</parameter>\n</function>\n<function=glob>\n"
        "<parameter=pattern>\n*.md\n</parameter>\n</function>\n</tool_call>",
        [("read", {"filePath": "a"}), ("glob", {"pattern": "*.md"})],
        "",
    ),
    Case(
        "crlf-line-endings",
        "<tool_call>\r\n<function=write>\r\n<parameter=filePath>\r\nw.txt\r\n</parameter>\r\n"
        "<parameter=content>\r\na\r\nb\r\n</parameter>\r\n</function>\r\n</tool_call>",
        [("write", {"filePath": "w.txt", "content": "a\r\nb"})],
        "",
    ),
    Case(
        "hermes-json-form",
        'Running it.\n<tool_call>\n{"name": "bash", "arguments": {"command": "pytest -q", "timeout": "60000"}}\n'
        "</tool_call>",
        [("bash", {"command": "pytest -q", "timeout": 60000})],
        "Running it.\n",
    ),
    Case(  # Llama-3 style, also seen from small Qwen2.5-coder models
        "function-json-body",
        'Checking.\n<function=grep>{"pattern": "def add", "include": "*.py"}</function>',
        [("grep", {"pattern": "def add", "include": "*.py"})],
        "Checking.\n",
    ),
    Case(  # ollama #16686 verbatim shape (tool renamed to opencode's)
        "ollama-16686",
        "I'll use the Glob tool to list all markdown files in the current directory.\n\n<function=glob>\n"
        "<parameter=pattern>\n*.md\n</parameter>\n</function>\n</tool_call>",
        [("glob", {"pattern": "*.md"})],
        "I'll use the Glob tool to list all markdown files in the current directory.\n\n",
    ),
    Case(
        "no-parameters",
        "<tool_call>\n<function=skill>\n</function>\n</tool_call>",
        [("skill", {})],
        "",
    ),
    Case(
        "unknown-then-known-call",
        "<tool_call>\n<function=write_file>\n<parameter=path>\nx\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=read>\n<parameter=filePath>\ny\n</parameter>\n</function>\n</tool_call>",
        [("read", {"filePath": "y"})],
        "<tool_call>\n<function=write_file>\n<parameter=path>\nx\n</parameter>\n</function>\n</tool_call>\n",
        {"unknownTool": 1},
    ),
    # -- left as text ---------------------------------------------------------------------
    Case(
        "unknown-tool",
        "<tool_call>\n<function=read_file>\n<parameter=path>\nREADME.md\n</parameter>\n</function>\n</tool_call>",
        [],
        "<tool_call>\n<function=read_file>\n<parameter=path>\nREADME.md\n</parameter>\n</function>\n</tool_call>",
        {"unknownTool": 1},
    ),
    Case(
        "truncated-mid-value",
        "Writing.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/w/a.py\n</parameter>\n"
        "<parameter=content>\nprint(",
        [],
        "Writing.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/w/a.py\n</parameter>\n"
        "<parameter=content>\nprint(",
        {"unterminated": 1},
        opened=True,
    ),
    Case(
        "bad-hermes-json",
        '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}\n</tool_call>',
        [],
        '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}\n</tool_call>',
        {"badJson": 1},
    ),
    Case(  # QwenLM/Qwen3-Coder #457: a broken parameter tag is not guessed at
        "broken-parameter-tag",
        "<function=bash>\n<parameter=command=ls</parameter>\n</function>",
        [],
        "<function=bash>\n<parameter=command=ls</parameter>\n</function>",
        {"malformed": 1},
    ),
    Case(
        "bad-function-json",
        '<function=grep>{"pattern": </function>',
        [],
        '<function=grep>{"pattern": </function>',
        {"badJson": 1},
    ),
    Case(
        "opener-then-prose",
        "The <tool_call> tag wraps a call.",
        [],
        "The <tool_call> tag wraps a call.",
        {"malformed": 1},
    ),
    Case(
        "function-then-prose",
        "<function=read>\n<parameter=filePath>a</parameter>\nand then I stopped",
        [],
        "<function=read>\n<parameter=filePath>a</parameter>\nand then I stopped",
        {"malformed": 1},
        opened=True,
    ),
    Case(
        "plain-text-with-brackets",
        "Compare a<b, x <= y, <div> and </p>; the tag <tool and <func are fine. Ends with <tool_c",
        [],
        "Compare a<b, x <= y, <div> and </p>; the tag <tool and <func are fine. Ends with <tool_c",
    ),
    Case(
        "plain-text",
        "The repository contains calc.py with an add function.",
        [],
        "The repository contains calc.py with an add function.",
    ),
    Case("empty", "", [], ""),
]
