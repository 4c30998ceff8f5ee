"""Metrics: perplexity is exp(token-weighted mean NLL), bits per byte follows from NLL and bytes, sliding windows
score every token once; checkpoint evaluation writes results.json."""

import json
import math
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutput, ImageClassifierOutput, MaskedLMOutput

from kanformer.config import load_config
from kanformer.evaluation.metrics import (
    bits_per_byte,
    classification_metrics,
    lm_nll,
    nll_sum,
    param_counts,
    perplexity,
    sliding_windows,
)
from kanformer.tasks import CausalLM, ImageClassification, MaskedLM
from tests.device_reads import DeviceReads


class Uniform(nn.Module):
    """A language model whose every prediction is the uniform distribution."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.dummy = vocab, nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return CausalLMOutput(logits=torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


class Bigram(nn.Module):
    """Fixed random next-token table: the NLL of each token depends only on its predecessor."""

    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, input_ids):
        return CausalLMOutput(logits=self.table[input_ids])


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    tokens = torch.randint(0, 50, (1000,))
    total, n = lm_nll(Uniform(50), tokens, context=64, stride=32)
    assert n == 999
    assert perplexity(total, n) == pytest.approx(50, rel=1e-6)


def test_bits_per_byte_consistent_with_nll():
    total, n_tokens, n_bytes = 1234.5, 600, 2400
    assert bits_per_byte(total, n_bytes) == pytest.approx(total / math.log(2) / n_bytes)
    # one byte per token and a uniform byte model: 8 bits per byte
    assert bits_per_byte(n_tokens * math.log(256), n_tokens) == pytest.approx(8.0)


def test_token_weighted_mean_with_unequal_batch_lengths():
    model = Bigram(20)
    seqs = [torch.randint(0, 20, (n,)) for n in (5, 17, 9)]
    total = count = 0
    for s in seqs:  # batches of different lengths
        t, c = nll_sum(model(s[None]).logits, s[None])
        total, count = total + t, count + c
    per_token = torch.cat([-torch.log_softmax(model.table[s[:-1]], -1).gather(1, s[1:, None]).squeeze(1)
                           for s in seqs])
    assert count == len(per_token) == 4 + 16 + 8
    assert total / count == pytest.approx(per_token.mean().item(), rel=1e-5)  # not the mean of batch means
    batch_means = [(nll_sum(model(s[None]).logits, s[None])[0] / (len(s) - 1)) for s in seqs]
    assert abs(sum(batch_means) / 3 - total / count) > 1e-3


@pytest.mark.parametrize("n,context,stride", [(100, 16, 8), (100, 16, 16), (37, 50, 10), (64, 16, 5)])
def test_sliding_windows_score_every_token_once(n, context, stride):
    scored = []
    for begin, end, n_new in sliding_windows(n, context, stride):
        assert end - begin <= context
        scored.extend(range(end - n_new, end))
    assert sorted(scored) == list(range(1, n))  # the first token has no context and is never scored
    bigram = Bigram(30)
    tokens = torch.randint(0, 30, (n,))
    total, count = lm_nll(bigram, tokens, context=context, stride=stride)
    full, full_count = nll_sum(bigram(tokens[None]).logits, tokens[None])
    assert count == full_count and total == pytest.approx(full, rel=1e-5)  # a bigram needs no more context


class Classifier(nn.Module):
    """Class scores from the pixels' mean: enough to be scored."""

    def __init__(self, classes):
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes))

    def forward(self, pixel_values):
        return ImageClassifierOutput(logits=pixel_values.mean((1, 2, 3))[:, None] * self.w)


def test_the_evaluation_loops_read_the_device_once(monkeypatch):
    """Perplexity's, the image classifier's and each task's scores are summed on the device and read once, however
    many batches (on a GPU every read drains the queue: the host could not prepare the next batch while the device
    ran the last)."""
    bigram, reads = Bigram(30), []
    for n in (200, 400):  # 24 and 49 windows, batches of 2
        tokens = torch.randint(0, 30, (n,))
        with DeviceReads().watch(monkeypatch) as probe:
            total, count = lm_nll(bigram, tokens, context=16, stride=8, batch_size=2)
        reads.append(probe.reads)
        full, full_count = nll_sum(bigram(tokens[None]).logits, tokens[None])
        assert count == full_count == n - 1 and total == pytest.approx(full, rel=1e-5)
    assert reads == [1, 1]
    model, x, y = Classifier(3), torch.randn(40, 1, 4, 4), torch.randint(0, 3, (40,))
    for batch_size in (20, 5):
        with DeviceReads().watch(monkeypatch) as probe:
            metrics = classification_metrics(model, x, y, batch_size=batch_size)
        assert probe.reads == 1
        logits = model(x).logits
        assert metrics["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        assert metrics["val_acc"] == (logits.argmax(-1) == y).sum().item() / len(y)
    # each task's scores of a batch: a tensor, nothing read; the masked LM's hits where the labels are, only
    ids = torch.randint(0, 30, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = ids[0, 3], 7
    logits = F.one_hot(ids, 30).float()  # predicts every input token
    loss = F.cross_entropy(logits.reshape(-1, 30), labels.reshape(-1), ignore_index=-100)
    cases = [(CausalLM(), {"input_ids": ids, "labels": ids}, [loss.item() * 14, 14, 0]),
             (MaskedLM(0.15), {"input_ids": ids, "labels": labels}, [loss.item() * 2, 2, 1 + (ids[1, 5] == 7)]),
             (ImageClassification(), {"labels": torch.tensor([1, 2])}, [loss.item() * 2, 2, 1])]
    for task, batch, want in cases:
        out = MaskedLMOutput(loss=loss, logits=logits if "input_ids" in batch else torch.eye(3)[[1, 0]])
        with DeviceReads().watch(monkeypatch) as probe:
            got = task.scores(out, batch)
        assert probe.reads == 0 and got.dtype == torch.float64
        assert got.tolist() == pytest.approx([float(w) for w in want])


def test_param_counts_exclude_embeddings_and_count_tied_heads_once():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=20))
    counts = param_counts(model)
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    assert counts["non_embedding_params"] == counts["params"] - 50 * 16 - 20 * 16


def test_measuring_saved_activations_keeps_nothing_alive_afterwards():
    """The saved tensors of a step whose size is measured are freed with it: a tanh saves its own output, which a
    pack hook holding the tensor itself would keep in a cycle with the graph, the weights it saved with it (a GPU
    benchmark grew by one step's activations per measured arm)."""
    import gc
    import weakref

    from kanformer.evaluation.metrics import saved_activation_bytes

    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    assert saved_activation_bytes(net, x) >= 5 * 16 * 4  # the tanh output, at least
    alive = [weakref.ref(p) for p in net.parameters()]
    del net
    gc.collect()
    assert [r() for r in alive] == [None] * len(alive)


def test_throughput_is_timed_once_the_background_compiles_are_done(monkeypatch, capsys):
    """A first call of ``auto`` starts a background compile and runs an interim path beside it (on 2 cores, with one
    of them): ``settle`` keeps calling until the compile is done, then once more (the call that takes its paths), and
    says how long it waited; the training and generation measurements time only after it; it gives up after its
    timeout, saying so; with nothing compiling it adds no call after a warm-up."""
    from kanformer.evaluation import metrics
    from kanformer.layers import autotune

    polls = iter([True, True, True, False])  # busy while the step's first calls run, done at the fourth look
    monkeypatch.setattr(autotune, "busy", lambda: next(polls, False))
    monkeypatch.setattr(metrics.time, "sleep", lambda s: None)
    calls = []
    waited = metrics.settle(lambda: calls.append(1), "training")
    assert len(calls) == 1 + 2 + 1 and waited >= 0  # the first call, one per busy look after it, one after the compile
    err = capsys.readouterr().err
    assert "timing training once the background compile of the KAN paths is done" in err and "s waited" in err

    monkeypatch.setattr(autotune, "busy", lambda: True)
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    assert metrics.settle(lambda: None, "generation", timeout_s=250) >= 250
    assert "still runs after 250 s: generation timed meanwhile" in capsys.readouterr().err

    monkeypatch.setattr(autotune, "busy", lambda: False)
    calls.clear()
    assert metrics.settle(lambda: calls.append(1), "training", first_call=False) == 0.0 and not calls

    # the measurements report the wait beside their figures
    monkeypatch.setattr(metrics.time, "monotonic", time.monotonic)
    net = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 16))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, labels=None):
            logits = self.net(input_ids)
            loss = None if labels is None else nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            return CausalLMOutput(loss=loss, logits=logits)

    ids = torch.randint(0, 16, (2, 4))
    out = metrics.measure_training(Tiny(), lambda: {"input_ids": ids, "labels": ids}, 8, steps=1, warmup=1)
    assert out["train_settle_s"] == 0.0 and out["train_tokens_per_s"] > 0


def test_checkpoint_evaluation_writes_results(tmp_path):
    from kanformer.cli import main
    from kanformer.evaluation.validation import evaluate_checkpoint
    from kanformer.train import train

    cfg = load_config(preset="debug", overrides=[f"out_dir={tmp_path}", "name=e", "train.max_steps=3",
                                                 "ffn.name=chebyshev"])
    train(cfg)
    main(["eval", str(cfg.run_dir / "final"), "--tokens", "2048", "--throughput-steps", "2"])
    result = json.loads((cfg.run_dir / "final" / "results.json").read_text())
    m = result["metrics"]
    assert m["val_tokens"] == 2048 and m["val_ppl"] == pytest.approx(math.exp(m["val_nll"]))
    assert m["val_bpb"] == pytest.approx(m["val_nll"] * m["val_tokens"] / math.log(2) / m["val_bytes"])
    assert m["train_tokens_per_s"] > 0 and m["generate_tokens_per_s"] > 0 and m["prefill_tokens_per_s"] > 0
    assert m["train_settle_s"] == m["generate_settle_s"] == 0.0  # the lean path: nothing compiled to wait for
    assert 0 < m["ffn_fwd_fraction"] < 1 and 0 < m["ffn_bwd_fraction"] < 1
    assert m["peak_rss_bytes"] > 0 and m["mfu"] is None  # no declared peak on CPU
    assert m["ffn_params"] > 0 and m["flops_per_token"] > 0
    assert result["versions"]["git_sha"] and result["config"]["ffn"]["name"] == "chebyshev"
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        evaluate_checkpoint(tmp_path)
