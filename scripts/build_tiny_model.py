"""Build the bundled tiny base model ``forgetless-tiny`` into src/forgetless/assets/tiny/.

Stages (each deterministic for a seed):
  1. corpus: stdlib English text -> general_{train,heldout}.txt.gz (written into the package)
  2. tokenizer: byte-level BPE (digits split individually) trained on the train split
  3. model: a small Llama pretrained with plain PyTorch (AdamW, cosine) on the train split

    python scripts/build_tiny_model.py --seed 0 --minutes 8
    python scripts/build_tiny_model.py --stage tokenizer     # corpus + tokenizer only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # BPE training: one thread, same merges every time

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from forgetless.data.general import build_documents, split_documents, write_corpus  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "src" / "forgetless" / "assets" / "tiny"
EOS, PAD = "<|endoftext|>", "<pad>"


def build_tokenizer(texts: list[str], out: Path, vocab_size: int = 4096):
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),  # "123" -> 1 2 3: arithmetic tasks need it
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # no BOS added
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
        model_max_length=1024, padding_side="right", clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    # Portable files: the class name older transformers know, and the map v5 no longer writes.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": EOS, "eos_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return fast


def make_config(tokenizer, args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads,
        intermediate_size=args.intermediate, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )


def token_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All documents as one id stream, each followed by EOS."""
    ids = []
    for enc in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, seq_len: int, batch: int = 16) -> float:
    """Next-token perplexity over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len].view(n, seq_len)
    y = stream[1: n * seq_len + 1].view(n, seq_len)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        logits = model(input_ids=x[i:i + batch]).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y[i:i + batch].flatten(), reduction="sum").item()
        count += y[i:i + batch].numel()
    model.train()
    return math.exp(total / count)


def pretrain(args, tokenizer, splits) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    model = LlamaForCausalLM(make_config(tokenizer, args))
    n_params = sum(p.numel() for p in model.parameters())
    train = token_stream(splits["train"], tokenizer)
    held = token_stream(splits["heldout"], tokenizer)
    ppl0 = perplexity(model, held, args.seq_len)
    print(f"params {n_params:,}  train tokens {len(train):,}  heldout tokens {len(held):,}  "
          f"ppl(random init) {ppl0:.1f}", flush=True)

    steps = args.steps
    if steps is None:  # time a few steps, then fit the budget (the step count is what is recorded)
        steps = _steps_for_budget(model, train, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    # linear warmup, then cosine from lr down to lr/10
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    g = torch.Generator().manual_seed(args.seed)
    t0, span = time.time(), args.seq_len + 1
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(train) - span, (args.batch,), generator=g)
        chunk = torch.stack([train[s:s + span] for s in starts])
        loss = model(input_ids=chunk[:, :-1], labels=chunk[:, :-1]).loss
        # labels=inputs: HF shifts internally, so position t predicts token t+1
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            el = time.time() - t0
            print(f"step {step}/{steps} loss {loss.item():.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(step + 1) * args.batch * args.seq_len / el:,.0f} tok/s", flush=True)
    elapsed = time.time() - t0
    ppl32 = perplexity(model, held, args.seq_len)
    half = LlamaForCausalLM(model.config)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ppl16 = perplexity(half, held, args.seq_len)
    use16 = abs(ppl16 - ppl32) / ppl32 < 0.01
    out_model = model.half() if use16 else model
    out_model.config.dtype = torch.float16 if use16 else torch.float32
    out_model.save_pretrained(args.out)
    os.chmod(args.out / "model.safetensors", 0o644)
    stats = {
        "seed": args.seed, "params": n_params, "steps": steps, "batch": args.batch,
        "seq_len": args.seq_len, "lr": args.lr, "tokens": steps * args.batch * args.seq_len,
        "train_corpus_tokens": len(train), "heldout_tokens": len(held), "seconds": round(elapsed, 1),
        "ppl_random_init": round(ppl0, 2), "ppl_float32": round(ppl32, 3),
        "ppl_float16": round(ppl16, 3), "saved_dtype": "float16" if use16 else "float32",
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(stats, indent=1))
    return stats


def _steps_for_budget(model, train, args) -> int:
    import copy

    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(12345)
    span, times = args.seq_len + 1, []
    for _ in range(6):
        starts = torch.randint(0, len(train) - span, (args.batch,), generator=g)
        chunk = torch.stack([train[s:s + span] for s in starts])
        t = time.time()
        probe(input_ids=chunk[:, :-1], labels=chunk[:, :-1]).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.time() - t)
    per_step = sorted(times[1:])[len(times[1:]) // 2]
    steps = max(10, int(args.minutes * 60 / per_step))
    print(f"{per_step:.3f} s/step -> {steps} steps for {args.minutes} min", flush=True)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["tokenizer", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget when --steps is not given")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    splits = split_documents(build_documents())
    write_corpus(splits, args.out)
    print(f"corpus: {len(splits['train'])} train / {len(splits['heldout'])} held-out documents", flush=True)
    tokenizer = build_tokenizer(splits["train"], args.out, args.vocab)
    print(f"tokenizer: {len(tokenizer)} tokens -> {args.out}", flush=True)
    if args.stage == "all":
        stats = pretrain(args, tokenizer, splits)
        (args.out / "build_stats.json").write_text(json.dumps(stats, indent=1) + "\n")


if __name__ == "__main__":
    main()
