"""How often the embedded model loops: a fixed prompt set (English and Chinese), several seeds, default settings
against the old sampling (no repetition penalty), in-process through `LlamaCppChatModel` as the chains call it
(the server's default system prompt first, then the user's message).

A reply "loops" when it holds the same segment (4–100 characters) three or more times back to back, one character
ten or more times in a row, or the same line (4+ characters) three or more times. `make bench` runs it;
`python -m bench.loop_rate` prints it alone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage

PROMPTS = [
    # The tutorial's and README's examples.
    "讲个笑话", "你好", "Tell me a joke", "Hello", "Write a short poem about the sea.",
    "Write a long story about a dragon who learns to bake bread. Make it at least 1000 words.",
    # English.
    "What is the capital of France?", "Explain what a rainbow is to a child.", "Give me three tips for sleeping "
    "better.", "How do I boil an egg?", "What is Python used for?", "Summarize the plot of Cinderella.",
    "Write a haiku about autumn.", "Why is the sky blue?",
    # Chinese.
    "介绍一下你自己", "今天天气怎么样？", "给我讲一个关于猫的故事", "如何学习编程？", "写一首关于春天的诗",
    "什么是人工智能？", "推荐三本好书", "怎样保持健康？", "北京有什么好玩的地方？", "解释一下什么是光合作用",
]
SEEDS = (1, 2, 3)
# The sampling before the loop fix: llama-cpp-python's create_completion defaults, no repetition penalty.
OLD_SAMPLING = {"repeat_penalty": 1.0, "repeat_last_n": 64, "top_k": 40, "top_p": 0.95, "min_p": 0.05}

_REPEATED_SEGMENT = re.compile(r"(.{4,100}?)\1{2,}", re.DOTALL)
_REPEATED_CHARACTER = re.compile(r"(.)\1{9,}", re.DOTALL)


def loops(text: str) -> bool:
    if _REPEATED_SEGMENT.search(text) or _REPEATED_CHARACTER.search(text):
        return True
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= 4]
    return any(lines.count(line) >= 3 for line in set(lines))


def loop_rate(sampling: dict[str, float], temperature: float, max_tokens: int, seeds: tuple[int, ...] = SEEDS,
              prompts: list[str] = PROMPTS) -> dict[str, Any]:
    from chains.common.settings import DEFAULT_SYSTEM_PROMPT, embedded_model_path
    from chains.models.local import LlamaCppChatModel

    path = embedded_model_path()
    assert path is not None
    model = LlamaCppChatModel.model_validate(
        {"model_path": path, "temperature": temperature, "max_tokens": max_tokens, **sampling})
    looping: list[dict[str, Any]] = []
    started = time.monotonic()
    for prompt in prompts:
        for seed in seeds:
            reply = str(model.invoke([SystemMessage(DEFAULT_SYSTEM_PROMPT), HumanMessage(prompt)], seed=seed).content)
            if loops(reply):
                looping.append({"prompt": prompt, "seed": seed, "reply": reply[:160]})
    replies = len(prompts) * len(seeds)
    return {"sampling": {**sampling, "temperature": temperature, "max_tokens": max_tokens}, "replies": replies,
            "looping": len(looping), "rate": len(looping) / replies, "examples": looping[:5],
            "seconds": round(time.monotonic() - started)}


def compare(max_tokens: int = 256, prompts: list[str] = PROMPTS, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    from chains.common.settings import Settings

    defaults = Settings.model_fields
    new_sampling = {name: defaults[f"local_{name}"].default for name in OLD_SAMPLING}
    temperature = defaults["temperature"].default
    return {"prompts": len(prompts), "seeds": list(seeds), "max_tokens": max_tokens,
            "before": loop_rate(OLD_SAMPLING, temperature, max_tokens, seeds, prompts),
            "after": loop_rate(new_sampling, temperature, max_tokens, seeds, prompts)}


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"Loop rate of the embedded model — {result['prompts']} prompts (English and Chinese, "
             f"bench/loop_rate.py) × seeds {result['seeds']}, default system prompt, "
             f"{result['max_tokens']} tokens:", "",
             "| sampling | looping replies | rate |", "| --- | --- | --- |"]
    for name in ("before", "after"):
        row = result[name]
        knobs = ", ".join(f"{k}={v}" for k, v in row["sampling"].items())
        lines.append(f"| {name}: {knobs} | {row['looping']} / {row['replies']} | {row['rate']:.1%} |")
    return lines


if __name__ == "__main__":
    import json
    import sys

    result = compare()
    print("\n".join(table(result)))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
