"""Fixtures for the evaluation tests: composed eval configs, a shared sandbox, tiny HF models."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from distill.evaluation.cli import CONF_DIR
from distill.sandbox import Sandbox, SandboxConfig

REPO = Path(__file__).resolve().parents[2]
MBPP_JSONL = REPO.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"

CODE_TEXT = '''
def add(a, b):
    """Return the sum of a and b."""
    return a + b


def is_even(n):
    return n % 2 == 0


class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)


for i in range(10):
    print(add(i, i), is_even(i))
'''


@pytest.fixture
def eval_cfg(tmp_path):
    """``eval_cfg(*overrides)``: ``conf/eval.yaml`` composed as the CLI would, writing to tmp."""

    def make(*overrides: str, output_dir: Path | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("eval", overrides=[f"output_dir={output_dir or tmp_path / 'eval'}",
                                              *overrides])

    return make


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox for a test module (workers start once)."""
    with Sandbox(SandboxConfig(timeout=2.0, workers=2)) as sb:
        yield sb


@pytest.fixture(scope="session")
def mbpp_path() -> Path:
    if not MBPP_JSONL.exists():
        pytest.skip(f"MBPP data not found at {MBPP_JSONL}")
    return MBPP_JSONL


def _tiny_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CODE_TEXT] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", unk_token="<|unk|>")
    if chat:
        fast.chat_template = ("{% for m in messages %}<|bos|>user: {{ m['content'] }}\n"
                              "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    return fast


def save_tiny_model(out: Path, seed: int = 0, chat: bool = False, hidden: int = 32) -> Path:
    """A 2-layer Llama with a BPE tokenizer trained on the fly, saved in HF format."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer(chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-chat"), seed=1, chat=True)


@pytest.fixture(scope="session")
def make_tiny_model():
    """``make_tiny_model(out_dir, seed=0, chat=False)`` -> the saved folder."""
    return save_tiny_model
