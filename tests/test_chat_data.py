"""Chat data: validation of conversations, the split, and which tokens carry the loss."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from saudial.config.settings import Settings
from saudial.data.chat import Conversation, check_template, parse_messages, split, tokenize
from saudial.errors import ConfigError, DataError
from saudial.run.trainer import sft_config

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
