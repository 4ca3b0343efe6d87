"""Prompt tokenization.

The 4B model uses Qwen2.5-VL's own tokenizer, loaded from a local directory. The tiny preset uses a
byte-level BPE tokenizer built here, deterministically and offline, from a fixed list of
manipulation words: any text still encodes (byte fallback), common task words are single tokens.

Prompt format (as the released model was trained): the literal text "<bos>" + task + "\\n", no chat
template, right-padded to `max_token_len`. A prompt longer than the budget is an error, not a
silent truncation.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB_SIZE = 512
PAD_TOKEN = "<pad>"

_WORDS = """
<bos> pick up place put the a an and to with from into onto on in of it its at by
left right both arm arms hand gripper grippers open close grasp release lift lower move push pull
transfer cube block peg socket insert insertion drawer cup mug bowl plate bottle box lid towel cloth
fold unfold stack unstack pour wipe clean sort handover hand over rotate turn flip press button
red green blue yellow black white orange purple pink brown small large big top bottom front back
side middle center table shelf basket tray container bin object item then first next finally slowly
carefully robot task episode""".split()


def build_tiny_tokenizer():
    """A PreTrainedTokenizerFast with TINY_VOCAB_SIZE entries at most; identical on every call."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = [" ".join(_WORDS[i:i + 12]) for i in range(0, len(_WORDS), 12)]
    corpus = sentences * 4 + [" " + w for w in _WORDS] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=[PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN)


def load_tokenizer(name_or_path: str):
    """'tiny' builds the built-in tokenizer; anything else is a local directory (never a download)."""
    if name_or_path == "tiny":
        return build_tiny_tokenizer()
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (no downloads are made; "
                                "point model.tokenizer or model.vlm_path at a local copy)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class PromptTokenizer:
    """Turns task strings into right-padded token ids and a validity mask."""

    def __init__(self, tokenizer, max_token_len: int, vocab_size: int):
        self.tokenizer = tokenizer
        self.max_token_len = max_token_len
        if len(tokenizer) > vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LLM vocabulary is "
                             f"llm.vocab_size={vocab_size}")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token to pad prompts with")
        self.pad_id = int(pad)

    @staticmethod
    def format(task: str) -> str:
        return "<bos>" + task.strip() + "\n"

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens long [B, max_token_len], token_mask bool [B, max_token_len]."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, one per sample; got a single str")
        tokens = torch.full((len(prompts), self.max_token_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), self.max_token_len), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt[{i}] must be a str; got {type(prompt).__name__}")
            ids = self.tokenizer.encode(self.format(prompt), add_special_tokens=False)
            if len(ids) > self.max_token_len:
                raise ValueError(f"prompt[{i}] is {len(ids)} tokens long, over the token budget "
                                 f"max_token_len={self.max_token_len}: {prompt[:80]!r}")
            tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, :len(ids)] = True
        return tokens, mask
