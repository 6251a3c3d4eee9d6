"""The messages of a case as transformers hands them to a chat template (standard library only).

Shared by the template stage's renderers and the Node renderer (``render_node``): keys whose value
is None dropped, reasoning aliased, ``continue_final_message`` marked with transformers' tag and
the render cut after it, the default of ``add_generation_prompt``.
"""

from __future__ import annotations

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _plain(value):
    """A fresh copy of JSON-shaped data (the template sees copies, never the case)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def prepare_messages(case: dict, alias_reasoning: bool = True) -> tuple[list, str | None]:
    """The messages as transformers hands them to a template: keys whose value is None dropped,
    reasoning aliased (``reasoning``/``thinking`` -> ``reasoning_content`` and ``thinking``; a
    caller that does not alias, like transformers.js, passes ``alias_reasoning=False``), and
    with ``continue_final_message`` the final content marked with transformers' tag. Returns the
    messages and the final text being continued (None when not continuing)."""
    messages = []
    for m in case["messages"]:
        m = {k: _plain(v) for k, v in m.items() if v is not None} if isinstance(m, dict) else _plain(m)
        if isinstance(m, dict) and alias_reasoning:
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        messages.append(m)
    if not case.get("continue_final_message"):
        return messages, None
    if case.get("add_generation_prompt", False):
        raise ValueError("continue_final_message and add_generation_prompt are not compatible")
    if not messages:
        raise ValueError("continue_final_message is set but the conversation is empty!")
    final = messages[-1].get("content")
    if final is None:
        raise ValueError('continue_final_message is set but the final message has no "content" to continue!')
    if isinstance(final, list):
        for block in reversed(final):
            if isinstance(block, dict) and "text" in block:
                final, block["text"] = block["text"], block["text"] + CONTINUE_TAG
                break
        else:
            raise ValueError(
                "continue_final_message is set but we could not find any text to continue in the final message!"
            )
    else:
        messages[-1]["content"] = final + CONTINUE_TAG
    return messages, final


def cut_continued(rendered: str, final: str) -> str:
    """transformers' cut after the continued final message (the tag marks where it ends)."""
    tag = CONTINUE_TAG
    if final.strip() not in rendered or tag.strip() not in rendered:
        raise ValueError(
            "continue_final_message is set but the final message does not appear in the chat "
            "after applying the chat template!"
        )
    loc = rendered.rindex(tag.strip())
    if rendered[loc : loc + len(tag)] == tag:
        return rendered[:loc]
    return rendered[:loc].rstrip()


def default_generation_prompt(case: dict) -> bool:
    return case.get("add_generation_prompt", not case.get("continue_final_message", False))
