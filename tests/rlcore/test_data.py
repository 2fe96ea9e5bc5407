"""Prompt data: JSONL loading with line-numbered errors, chat rendering, a cursor that resumes exactly."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rlcore.data import PromptCursor, read_jsonl, render_prompt
from rlcore.errors import DatasetError


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a"}\n\n{"prompt": 3}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl: line 3.prompt must be a non-empty string"):
        read_jsonl(p)
    p.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"d.jsonl: line 2 is not valid JSON"):
        read_jsonl(p)
    # The same reader as an upload's (rlcore/jsonl.py): bad UTF-8 and an empty file are named too.
    p.write_bytes(b'{"prompt": "a"}\n\xff\xfe\n')
    with pytest.raises(DatasetError, match=r"d.jsonl: line 2 is not UTF-8 text"):
        read_jsonl(p)
    p.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"d.jsonl: the file has no rows"):
        read_jsonl(p)
    with pytest.raises(DatasetError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_messages_rows_use_the_chat_template(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = render_prompt({"messages": [{"role": "user", "content": "hi"}]}, tok)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt({"prompt": "plain"}, tok) == "plain"


def test_cursor_covers_every_row_each_epoch_and_resumes_exactly():
    c = PromptCursor(num_rows=5, seed=3)
    first = c.next_indices(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    c.next_indices(3)
    state = c.state_dict()
    rest = c.next_indices(7)
    d = PromptCursor(num_rows=5, seed=3)
    d.load_state_dict(state)
    assert d.next_indices(7) == rest
