"""Chat data in process: validation of conversations, reading chat files, the split, which tokens carry the
loss (training and the eval loss alike), prompts bounded for generation, and batched replies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from saudial.config.settings import Settings
from saudial.data.chat_examples import held_out_frame, to_examples
from saudial.data.conversations import ChatData, load_configured_data, read_conversations
from saudial.data.messages import Conversation, check_template, parse_messages, prompt_ids, render, split, tokenize
from saudial.data.workbook import Dataset, read_table
from saudial.errors import ConfigError, DataError
from saudial.inference.batches import reply_text, special_ids
from saudial.inference.evaluation import loss_examples
from saudial.inference.generate import chat_replies
from saudial.training.trainer import sft_config
from tests.adapter_run import random_adapter

THREE_TURNS = Conversation(
    (
        ("system", "You answer in Najdi."),
        ("user", "Where is the market?"),
        ("assistant", "السوق هناك"),
        ("user", "And the mosque?"),
        ("assistant", "المسجد جنبه"),
        ("user", "Thanks!"),
        ("assistant", "العفو"),
    ),
    where="line 1",
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "non-empty list"),
        ("not json", "not a JSON list"),
        ([{"role": "user"}], "needs 'role' and 'content'"),
        ([{"role": "narrator", "content": "x"}], "role 'narrator' is not one of"),
        ([{"role": "user", "content": 3}], "the content is a number, not text"),
        ([{"role": "user", "content": "  "}], "empty user content"),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
    ],
)
def test_bad_conversations_name_the_line(value: object, expected: str) -> None:
    with pytest.raises(DataError, match=expected) as info:
        parse_messages(value, "line 7")
    assert str(info.value).startswith("line 7")


def test_split_keeps_conversations_with_the_same_opening_together() -> None:
    conversations = [
        Conversation((("user", f"question {i % 10}"), ("assistant", f"answer {i}")), dialect=d)
        for i, d in zip(range(80), ["Najdi", "Hijazi"] * 40, strict=True)
    ]
    train, held = split(conversations, 0.2, seed=3)
    assert len(train) + len(held) == 80 and held
    assert not {c.first_user for c in train} & {c.first_user for c in held}
    assert (train, held) == split(conversations, 0.2, seed=3)


def test_loss_is_on_every_assistant_turn_and_its_end_of_turn_only(tiny_model: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = tokenize(tokenizer, THREE_TURNS)
    settings = Settings(model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=sft_config(settings, torch.float32),
        train_dataset=datasets.Dataset.from_list([example]),
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset[0]
    assert prepared["input_ids"] == example["input_ids"]
    learned = [token for token, label in zip(prepared["input_ids"], prepared["labels"], strict=True) if label != -100]
    eos = tokenizer.eos_token
    # Exactly the three replies, each with the end-of-turn token that teaches the model to stop.
    assert tokenizer.decode(learned) == f"السوق هناك{eos}المسجد جنبه{eos}العفو{eos}"
    assert learned.count(tokenizer.eos_token_id) == 3
    # Nothing of the system prompt, the user turns or the role headers carries loss.
    masked = tokenizer.decode(
        [t for t, label in zip(prepared["input_ids"], prepared["labels"], strict=True) if label == -100]
    )
    assert "You answer in Najdi." in masked and "Where is the market?" in masked and "assistant" in masked


def test_a_tokenizer_without_chat_template_is_refused(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        check_template(tokenizer, "tiny")


# --- reading chat files (data/conversations.py) ------------------------------------------------------


def _load(path: Path, **settings: Any) -> Any:
    return load_configured_data(Settings.model_validate({"data": path, "task": "chat", **settings}))


def _write_lines(path: Path, *lines: Any) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


USER, REPLY = {"role": "user", "content": "Where is the market?"}, {"role": "assistant", "content": "السوق هناك"}


def test_reading_conversations_by_the_workbook_rules(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "chat.jsonl",
        {"messages": [USER, REPLY], "dialect": "Najdi"},
        {"messages": [USER, REPLY], "dialect": "Najdi"},  # an exact duplicate: kept once
        {"messages": [{"role": "user", "content": "\u202eWhere\x00 now?"}, REPLY], "dialect": "\u200bHijazi"},
        {"prompt": [{"role": "system", "content": "Be brief."}, USER, REPLY, USER], "completion": [REPLY]},
    )
    data = _load(path)
    assert isinstance(data, ChatData) and data.task == "chat"
    assert (data.rows_read, data.duplicates_removed, len(data.conversations)) == (4, 1, 3)
    assert data.control_chars_removed == 2  # in the messages; the dialect's are counted in its warning
    first, controlled, paired = data.conversations
    assert first.dialect == "Najdi" and first.where.endswith("chat.jsonl line 1")
    assert controlled.messages[0] == ("user", "Where now?") and controlled.dialect == "Hijazi"
    assert paired.dialect == "" and paired.learn_from == 4 and paired.messages[-1] == ("assistant", "السوق هناك")
    assert [c.dialect for c in _load(path, dialects=["hijazi"]).conversations] == ["Hijazi"]
    with pytest.raises(DataError, match=r"SAUDIAL_DIALECTS names \['Bedouin'\], not in .*Hijazi, Najdi"):
        _load(path, dialects=["Bedouin"])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"messages": [USER, REPLY], "prompt": [USER], "completion": [REPLY]}, "has both 'messages' and 'prompt'"),
        ({"prompt": [USER], "completion": [USER]}, "line 1, completion: no assistant message"),
        ({"prompt": [USER], "completion": [{"role": "system", "content": "x"}, REPLY]}, "system message belongs"),
        ({"messages": [USER, REPLY], "dialect": "Najdi; rm -rf /"}, "the Dialect value is not a dialect name"),
        ({"messages": ["hello"]}, "line 1, message 1: needs 'role' and 'content'"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "message 2: needs 'role' and 'content'"),
    ],
)
def test_bad_rows_name_the_file_and_line(line: dict[str, Any], expected: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        _load(_write_lines(tmp_path / "chat.jsonl", line))
    assert str(tmp_path / "chat.jsonl") in str(info.value) and "السوق" not in str(info.value)


def test_parquet_conversations(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": pa.array([[USER, REPLY]] * 2), "dialect": ["Najdi", "Eastern"]}), path)
    data = _load(path)
    assert [c.messages for c in data.conversations] == [
        (("user", USER["content"]), ("assistant", REPLY["content"]))
    ] * 2
    pq.write_table(pa.table({"messages": pa.array(["hello"])}), path)
    with pytest.raises(DataError, match=re.escape("chat.parquet row 1: the messages are text that is not a JSON list")):
        _load(path)


def test_conversations_to_reply_to(tmp_path: Path) -> None:
    """`chat --input`: no assistant turn needed, the last message the user's; a prompt/completion row's prompt."""
    path = _write_lines(tmp_path / "ask.jsonl", {"messages": [USER]}, {"prompt": [USER], "completion": [REPLY]})
    found, _ = read_conversations(read_table(path, setting="--input"), to_reply=True)
    assert [c.messages for c in found] == [(("user", USER["content"]),)] * 2


def test_task_auto_and_translate(tmp_path: Path, workbook: Path) -> None:
    chat_file = _write_lines(tmp_path / "chat.jsonl", {"messages": [USER, REPLY]})
    auto = Settings.model_validate({"data": chat_file, "task": "auto"})
    assert isinstance(load_configured_data(auto), ChatData)
    rows = load_configured_data(Settings.model_validate({"data": workbook, "task": "auto"}))
    assert isinstance(rows, Dataset) and rows.task == "translate"
    with pytest.raises(DataError, match=r"holds conversations .* set SAUDIAL_TASK=chat"):
        load_configured_data(Settings.model_validate({"data": chat_file}))  # translate, the default


# --- tokens: the loss, the bound, the generation prompt ----------------------------------------------


def test_prompt_completion_rows_learn_the_completion_only(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    paired = Conversation(THREE_TURNS.messages, learn_from=6)  # the prompt holds the first two exchanges
    example = tokenize(tokenizer, paired)
    learned = [t for t, m in zip(example["input_ids"], example["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(learned) == f"العفو{tokenizer.eos_token}"


def test_masks_stop_at_max_length_and_agree_before_it(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    long = Conversation(THREE_TURNS.messages * 1 + tuple(THREE_TURNS.messages[1:]) * 40, where="line 1")
    whole, bounded = tokenize(tokenizer, long), tokenize(tokenizer, long, max_length=64)
    assert whole["input_ids"] == bounded["input_ids"] and len(whole["input_ids"]) > 1000
    assert bounded["assistant_masks"][:64] == whole["assistant_masks"][:64]
    assert not any(bounded["assistant_masks"][80:]) and any(whole["assistant_masks"][80:])


def test_prompt_ids_are_bounded_and_end_with_the_generation_prompt(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = Conversation(THREE_TURNS.messages[:-1]).as_dicts()  # system, 2 exchanges, the last user turn
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    ids, cut = prompt_ids(tokenizer, messages, 4096)
    assert not cut and ids == tokenizer(render(tokenizer, messages, True), add_special_tokens=False)["input_ids"]
    short, cut = prompt_ids(tokenizer, messages, len(ids) - 1)
    assert cut and len(short) < len(ids) and short[-len(header) :] == header
    text = tokenizer.decode(short)
    assert "You answer in Najdi." in text and "Thanks!" in text and "Where is the market?" not in text  # oldest out
    tiny, cut = prompt_ids(tokenizer, [{"role": "user", "content": "the market " * 200}], 32)
    assert cut and len(tiny) == 32 and tiny[-len(header) :] == header


def test_eval_loss_labels_are_the_trainers(tiny_model: Path, tmp_path: Path) -> None:
    """The eval loss of `saudial evaluate` is on the tokens training learns: TRL's labels, cut as TRL cuts."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = Settings(model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path, task="chat")
    settings = settings.model_copy(update={"max_length": 48})
    conversations = [THREE_TURNS, Conversation(THREE_TURNS.messages[1:3], where="line 2")]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=sft_config(settings, torch.float32),
        train_dataset=to_examples(conversations, tokenizer, settings.max_length),
        processing_class=tokenizer,
    )
    ours = list(loss_examples(tokenizer, held_out_frame(conversations), settings))
    assert [cut for *_, cut in ours] == [True, False]
    learned = [(ids, labels) for ids, labels, _ in ours if set(labels) != {-100}]  # TRL leaves the others out
    assert learned == [(row["input_ids"], row["labels"]) for row in trainer.train_dataset]
    assert len(learned) == 2 and learned[0][1][-1] != -100  # the first reply, cut mid-turn, still learned


def test_reply_text_stops_at_the_first_special_token(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(" هلا والله<|im_end|>\n<|im_start|>user\nmore", add_special_tokens=False)["input_ids"]
    assert reply_text(tokenizer, ids, special_ids(tokenizer)) == "هلا والله"


@pytest.mark.slow
def test_batched_replies_equal_one_by_one(tiny_model: Path) -> None:
    """Left padding must not change a reply: a batch of conversations of mixed lengths == each alone."""
    settings = Settings.model_validate(
        {"model_name_or_path": str(tiny_model), "quantization": "none", "max_new_tokens": 6, "repetition_penalty": 1.0}
    )
    model, tokenizer = random_adapter(settings)
    conversations = [
        Conversation(THREE_TURNS.messages[:2]).as_dicts(),
        Conversation(THREE_TURNS.messages[:-1]).as_dicts(),
        [{"role": "user", "content": "Open the door."}],
    ]
    batched = chat_replies(model, tokenizer, conversations, settings, progress=False)
    alone = [chat_replies(model, tokenizer, [c], settings, progress=False)[0] for c in conversations]
    assert batched == alone and any(batched)
