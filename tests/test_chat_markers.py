"""Chat templates with `{% generation %}` markers (data/messages.py): the assistant tokens they mark agree with
saudial's own masks and with TRL's assistant_only_loss on a 3-turn conversation; an LFM2.5-shaped template
(devtools/tiny.LFM25_CHAT_TEMPLATE: tools, tool calls, `<think>` blocks) renders and trains on the tiny LFM2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from saudial.data import messages
from saudial.data.messages import Conversation
from saudial.devtools import tiny
from saudial.errors import ConfigError
from tests.chat_files import conversations, write_jsonl
from tests.jobs import job_env, run_job

THREE_TURNS = (
    ("system", "Answer in Najdi Arabic."),
    ("user", "Where is the market?"),
    ("assistant", "The market is near the mosque."),
    ("user", "And the school?"),
    ("assistant", "Behind the old door."),
    ("user", "Thank you."),
    ("assistant", "You are welcome."),
)


@pytest.fixture(scope="module")
def lfm25_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build(tmp_path_factory.mktemp("tiny-lfm25"), template="lfm2.5")


@pytest.fixture(scope="module")
def lfm25(lfm25_model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(lfm25_model)


def test_the_markers_give_saudials_masks_and_trls_on_three_turns(
    lfm25: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    assert messages.has_markers(lfm25)
    conversation = Conversation(THREE_TURNS, where="line 1")
    marked = messages.tokenize(lfm25, conversation)  # the markers' path
    own = messages.prefix_masks(lfm25, conversation)  # saudial's own rule, on the same template
    assert marked == own
    learned = lfm25.decode([t for t, m in zip(marked["input_ids"], marked["assistant_masks"], strict=True) if m])
    assert learned == "The market is near the mosque.<|im_end|>Behind the old door.<|im_end|>You are welcome.<|im_end|>"
    # TRL's own assistant_only_loss, from the same conversation as a `messages` row: the same tokens and mask.
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(lfm25.name_or_path),
        args=SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, report_to="none", use_cpu=True),
        train_dataset=datasets.Dataset.from_list([{"messages": conversation.as_dicts()}]),
        processing_class=lfm25,
    )
    row: Any = trainer.train_dataset[0]  # type: ignore[index]  # TRL folds the assistant mask into the labels (-100: no loss)
    assert row["input_ids"] == marked["input_ids"]
    expected = [t if m else -100 for t, m in zip(marked["input_ids"], marked["assistant_masks"], strict=True)]
    assert row["labels"] == expected


def test_an_earlier_think_block_needs_the_markers(lfm25: PreTrainedTokenizerBase) -> None:
    turns = (*THREE_TURNS[:2], ("assistant", "<think>near?</think>The market is near the mosque."), *THREE_TURNS[3:])
    conversation = Conversation(turns, where="line 2")
    with pytest.raises(ConfigError, match="does not render a conversation as the sum of its turns"):
        messages.prefix_masks(lfm25, conversation)  # the template drops that <think> once later turns follow
    marked = messages.tokenize(lfm25, conversation)
    text = lfm25.decode(marked["input_ids"])
    assert "near?" not in text and "The market is near the mosque." in text
    # A prompt/completion row: the prompt's assistant turns carry no loss.
    completion_only = messages.tokenize(lfm25, Conversation(turns, where="line 3", learn_from=6))
    learned = [t for t, m in zip(completion_only["input_ids"], completion_only["assistant_masks"], strict=True) if m]
    assert lfm25.decode(learned) == "You are welcome.<|im_end|>"


def test_the_lfm25_template_renders_tools_calls_and_thinking(lfm25: PreTrainedTokenizerBase) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    chat: Any = [
        {"role": "system", "content": "Answer in Najdi Arabic."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "<think>look it up</think>Checking.",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Riyadh"}}}],
        },
        {"role": "tool", "content": '{"temp": 30}'},
        {"role": "assistant", "content": "<think>hot</think>30 degrees."},
    ]
    text = lfm25.apply_chat_template(chat, tools=tools, tokenize=False)
    assert text == (
        "<|startoftext|><|im_start|>system\nAnswer in Najdi Arabic.\nList of tools: <|tool_list_start|>"
        + json.dumps(tools)
        + "<|tool_list_end|><|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
        '<|tool_call_start|>[get_weather(city="Riyadh")]<|tool_call_end|>Checking.<|im_end|>\n'
        '<|im_start|>tool\n<|tool_response_start|>{"temp": 30}<|tool_response_end|><|im_end|>\n'
        "<|im_start|>assistant\n<think>hot</think>30 degrees.<|im_end|>\n"
    )
    prompt = lfm25.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert isinstance(prompt, str) and prompt.endswith("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n")


def test_markers_without_the_end_of_turn_token_are_refused(lfm25: PreTrainedTokenizerBase) -> None:
    broken = lfm25.__class__.from_pretrained(lfm25.name_or_path)
    inside = '{{- content + "<|im_end|>" -}}{%- endgeneration -%}'
    outside = '{{- content -}}{%- endgeneration -%}{{- "<|im_end|>" -}}'
    broken.chat_template = tiny.LFM25_CHAT_TEMPLATE.replace(inside, outside)
    assert broken.chat_template != tiny.LFM25_CHAT_TEMPLATE
    with pytest.raises(ConfigError, match="would never learn to stop"):
        messages.check_template(broken, "the tiny model")


@pytest.mark.slow  # one chat run of the entry point on the tiny LFM2 with the LFM2.5 template: ~30 s on 2 cores
def test_a_chat_run_trains_with_the_lfm25_template(lfm25_model: Path, tmp_path: Path) -> None:
    lines = conversations(24)
    lines[1]["messages"][2]["content"] = "<think>a short thought</think>" + lines[1]["messages"][2]["content"]
    data = write_jsonl(tmp_path / "chat.jsonl", lines)
    out = tmp_path / "out"
    code, log = run_job(job_env(lfm25_model, data, out, SAUDIAL_TASK="chat", SAUDIAL_MAX_STEPS="3"))
    assert code == 0, log[-3000:]
    assert "found by the chat template's {% generation %} markers" in log
    record = json.loads((out / "run_manifest.json").read_text())
    assert record["data"]["assistant_tokens_from"] == "generation markers"
    assert (out / "adapter_model.safetensors").is_file()
