"""Talking to a reasoning model and reading its ``<think>`` block (coverage C24).

:func:`chat` formats a question with the training template, decodes an answer and splits
it into the chain of thought and the final answer, the way DeepSeek-R1's output is read
(``<think> ... </think>`` then the answer). :func:`format_chat` and :func:`show_chat`
pretty-print the result in a terminal (ANSI colours) or a notebook (HTML).

To run the trained model in a local runner (llama.cpp, Ollama, LM Studio), save it with
``model.save_pretrained(dir); tokenizer.save_pretrained(dir)`` and convert ``dir`` with
llama.cpp's ``convert_hf_to_gguf.py``; :func:`save_for_local_runners` does the first step and
returns the conversion command (the converter is not a dependency of rlcore).
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import torch

__all__ = ["chat", "format_chat", "show_chat", "save_for_local_runners"]


def chat(model, tokenizer, question, template: str | None = "r1_zero", max_new_tokens: int = 256,
         temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """Ask ``model`` one question; returns ``dict(question, prompt, raw, thinking, answer, ...)``.

    ``question`` is a string or a :class:`rlcore.llm.tasks.Example`. ``template`` as in training
    (``"r1_zero"`` prefills ``<think>``, ``"chat"`` uses the tokenizer's chat template, ``None``
    the bare question). ``temperature=0`` decodes greedily; otherwise samples with ``seed``.

    * ``raw``: the generated text as the model wrote it (after the prompt);
    * ``thinking``: the content of the ``<think>`` block (``None`` if there is none; if the
      block was never closed, e.g. cut by ``max_new_tokens``, everything after ``<think>``);
    * ``answer``: the content of the last ``<answer>`` block, or ``None``;
    * ``well_formed``: the strict format check of :func:`rlcore.llm.rewards.format_reward`;
    * ``finished``: the model stopped by itself (EOS) rather than at ``max_new_tokens``.
    """
    from .grpo import _format
    from .rewards import extract_answer, extract_think, is_well_formed
    from .sampling import generate

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    prompt = _format(question, template, tokenizer)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    greedy = temperature == 0
    ro = generate(model, tokenizer, [prompt], num_generations=1, max_new_tokens=max_new_tokens,
                  temperature=1.0 if greedy else temperature, top_p=top_p, greedy=greedy, generator=gen)
    raw = ro.completions[0]
    prefilled = prompt.rstrip().endswith("<think>")
    thinking = extract_think(raw, prefilled_think=prefilled)
    if thinking is None:
        text = ("<think>" if prefilled else "") + raw
        if "<think>" in text:  # opened but never closed
            thinking = text.split("<think>", 1)[1].split("<answer>", 1)[0].strip()
    return {
        "question": question if isinstance(question, str) else question.prompt,
        "prompt": prompt,
        "raw": raw,
        "thinking": thinking,
        "answer": extract_answer(raw),
        "well_formed": is_well_formed(raw, prefilled_think=prefilled),
        "finished": bool(ro.terminated[0]),
        "num_tokens": int(ro.completion_mask.sum()),
    }


def format_chat(result: dict, color: bool | None = None, width: int = 100) -> str:
    """Readable text of a :func:`chat` result: the question, the thinking (dimmed, indented), the answer.

    ``color=None`` uses ANSI colours when stdout is a terminal."""
    import sys
    import textwrap

    if color is None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    dim, bold, green, reset = ("\033[2m", "\033[1m", "\033[32m", "\033[0m") if color else ("", "", "", "")
    lines = [f"{bold}User:{reset} {result['question']}"]
    thinking = result.get("thinking")
    if thinking:
        lines.append(f"{bold}<think>{reset}")
        for para in thinking.splitlines():
            wrapped = textwrap.wrap(para, width=width - 2) or [""]
            lines += [f"{dim}  {w}{reset}" for w in wrapped]
        lines.append(f"{bold}</think>{reset}")
    answer = result.get("answer")
    lines.append(f"{bold}Answer:{reset} {green}{answer}{reset}" if answer is not None
                 else f"{bold}Answer:{reset} (none; raw output: {result['raw']!r})")
    notes = []
    if not result.get("finished", True):
        notes.append("cut at max_new_tokens")
    if not result.get("well_formed", True):
        notes.append("not in the strict <think>/<answer> format")
    if notes:
        lines.append(f"{dim}[{'; '.join(notes)}]{reset}")
    return "\n".join(lines)


def _html(result: dict) -> str:
    esc = html.escape
    think = result.get("thinking")
    parts = [f"<div style='font-family:sans-serif'><b>User:</b> {esc(result['question'])}"]
    if think:
        parts.append("<details open><summary><i>thinking</i></summary>"
                     f"<pre style='color:#666;white-space:pre-wrap;margin-left:1em'>{esc(think)}</pre></details>")
    ans = result.get("answer")
    parts.append(f"<b>Answer:</b> <span style='color:#1a7f37'>{esc(ans)}</span>" if ans is not None
                 else f"<b>Answer:</b> <i>none</i> (raw: <code>{esc(result['raw'])}</code>)")
    parts.append("</div>")
    return "".join(parts)


def show_chat(result: dict) -> None:
    """Display a :func:`chat` result: collapsible HTML in a notebook, coloured text in a terminal."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None and "IPKernelApp" in get_ipython().config:
            display(HTML(_html(result)))
            return
    except ImportError:
        pass
    print(format_chat(result))


def save_for_local_runners(model, tokenizer, directory: str | os.PathLike) -> str:
    """Save model + tokenizer in Hugging Face format and return the llama.cpp command that turns
    ``directory`` into a GGUF file for Ollama / LM Studio / llama.cpp (run it where llama.cpp is checked out)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return f"python convert_hf_to_gguf.py {directory} --outfile {directory / 'model.gguf'} --outtype f16"
