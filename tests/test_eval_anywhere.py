"""`kanformer eval <checkpoint>... --data <source> --tasks <names>`: any dataset with the checkpoint's own tokenizer,
several checkpoints in one table, lm-evaluation-harness on a local task, and clear errors."""

import json
import math
import shutil

import pytest
import torch
import transformers

from kanformer.cli import main as cli
from kanformer.config import load_config
from kanformer.evaluation.datasets import evaluate_data
from kanformer.train import train

DOCS = ["The quick brown fox jumps over the lazy dog.", "Python is a programming language.",
        "A list holds items in order; a dict maps keys to values, and a set holds each item once. " * 3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A debug GPT-2 (context 32 tokens) and a ViT, trained briefly, and a jsonl of documents (one longer than the
    context)."""
    root = tmp_path_factory.mktemp("eval")
    over = [f"out_dir={root}", "log.wandb=disabled", "train.max_steps=10", "train.eval_every=10"]
    train(load_config(preset="debug", overrides=over))
    train(load_config(preset="debug_vit", overrides=over))
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    return root / "debug" / "final", root / "debug_vit" / "final", docs


def _by_hand(checkpoint, docs):
    """Bits per byte of each document after the end-of-text token, scored directly with the model (each document
    shorter than the context)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    total = 0.0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([[tok.eos_token_id, *tok(d)["input_ids"]]])
            assert ids.shape[1] <= model.config.n_positions
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    return total / (math.log(2) * sum(len(d.encode()) for d in docs))


def test_data_scores_a_jsonl_as_by_hand(trained, tmp_path):
    gpt, _, _ = trained
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS[:2]))
    table = evaluate_data([gpt], [f"files:{short}"], text_field="body", tokens=10_000)
    scores = table["rows"][0]["datasets"][f"files:{short}"]
    assert scores["documents"] == 2 and scores["bpb"] == pytest.approx(_by_hand(gpt, DOCS[:2]), rel=1e-6)
    saved = json.loads((gpt / "results.json").read_text())
    assert saved["datasets"][f"files:{short}"]["bpb"] == scores["bpb"]  # results.json keyed by dataset


def test_several_checkpoints_make_one_table(trained, tmp_path):
    gpt, _, docs = trained
    other = tmp_path / "copy"
    shutil.copytree(gpt, other)
    cli(["eval", str(gpt), str(other), "--data", f"files:{docs}", "--data", "pydoc", "--tokens", "2000",
         "--table", str(tmp_path / "table")])
    table = json.loads((tmp_path / "table" / "eval_table.json").read_text())
    assert [r["checkpoint"] for r in table["rows"]] == [str(gpt), str(other)]
    a, b = (r["datasets"] for r in table["rows"])
    assert a == b and a["pydoc"]["tokens"] == 2000 and a[f"files:{docs}"]["documents"] == 3
    md = (tmp_path / "table" / "eval_table.md").read_text()
    assert md.count(f"{a['pydoc']['bpb']:.4f}") == 2 and "pydoc: bits/byte" in md


@pytest.mark.slow
def test_a_local_harness_task_agrees_with_the_kit(trained, tmp_path):
    gpt, _, docs = trained
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local.yaml").write_text(
        "task: kanformer_local_docs\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {docs}\noutput_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n"
        "  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n"
        "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n")
    # stride = context: the kit's windows are the harness's rolling windows (the third document spans two)
    table = evaluate_data([gpt], [f"files:{docs}"], tasks=["kanformer_local_docs"], include_path=str(tasks),
                          stride=32, tokens=10_000)
    row = table["rows"][0]
    kit, harness = row["datasets"][f"files:{docs}"]["bpb"], row["tasks"]["kanformer_local_docs"]["bits_per_byte"]
    assert abs(kit - harness) < 1e-3, (kit, harness)
    assert json.loads((gpt / "results.json").read_text())["tasks"]["kanformer_local_docs"]["bits_per_byte"] == harness
    with pytest.raises(ValueError, match=r"unknown lm-evaluation-harness task\(s\): 'kanformer_local_doc' \(close: "
                                         r"kanformer_local_docs"):
        evaluate_data([gpt], [], tasks=["kanformer_local_doc"], include_path=str(tasks))


def test_images_and_mismatches_are_named(trained, tmp_path, monkeypatch):
    gpt, vit, docs = trained
    acc = evaluate_data([vit], ["digits"])["rows"][0]["datasets"]["digits"]
    assert 0 <= acc["acc"] <= 1 and acc["examples"] > 100
    with pytest.raises(ValueError, match="is an image classifier .* is text"):
        evaluate_data([vit], [f"files:{docs}"])
    with pytest.raises(ValueError, match="'digits' is an image dataset; .* is a language model"):
        evaluate_data([gpt], ["digits"])
    with pytest.raises(ValueError, match=r"has no field 'body' \(data.text_field\); fields: \['id', 'text'\]"):
        evaluate_data([gpt], [f"files:{docs}"], text_field="body")
    bare = tmp_path / "bare"
    shutil.copytree(gpt, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="holds no tokenizer .* never a new one"):
        evaluate_data([bare], ["pydoc"])
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(ImportError, match=r"pip install 'kanformer\[lmeval\]'"):
        evaluate_data([gpt], [], tasks=["wikitext"])


def test_prepared_shards_of_another_tokenizer_are_refused(trained, tmp_path):
    from kanformer.config import DataConfig
    from kanformer.data import prepare

    gpt, _, _ = trained
    same = prepare(DataConfig(dataset="pydoc", vocab_size=384), out=tmp_path / "same", progress=False)  # as trained
    score = evaluate_data([gpt], [str(same)], tokens=1000)["rows"][0]["datasets"][str(same)]
    assert score["tokens"] == 1000
    other = prepare(DataConfig(dataset="pydoc", vocab_size=300), out=tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="was tokenized with another tokenizer"):
        evaluate_data([gpt], [str(other)])


def _front_matter(readme):
    import yaml

    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_saved_models_carry_a_model_card(trained, tmp_path):
    gpt, vit, docs = trained
    meta, text = _front_matter(gpt / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"kanformer", "kan", "gpt2", "ffn-mlp"} <= set(meta["tags"])
    assert meta["license"] == "other" and "Python Software Foundation" in meta["license_name"]  # pydoc's license
    model = transformers.AutoModelForCausalLM.from_pretrained(gpt)
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in text
    tokens = 10 * 8 * 32  # steps x batch x block size
    assert f"- tokens: {tokens:,}" in text and "trust_remote_code=True" in text
    evaluate_data([gpt], [f"files:{docs}"], tokens=1000)  # results arrive: the card shows them
    bpb = json.loads((gpt / "results.json").read_text())["datasets"][f"files:{docs}"]["bpb"]
    assert f"| files:{docs} | bpb | {bpb:.4g} |" in (gpt / "README.md").read_text()
    meta, text = _front_matter(vit / "README.md")
    assert meta["pipeline_tag"] == "image-classification" and meta["license"] == "cc-by-4.0"
    assert "AutoModelForImageClassification" in text


def test_a_masked_lm_is_scored_on_masked_tokens(tmp_path):
    cfg = load_config(preset="debug_bert", overrides=[f"out_dir={tmp_path}", "train.max_steps=4", "log.wandb=disabled"])
    train(cfg)
    final = cfg.run_dir / "final"
    first = evaluate_data([final], ["pydoc"], tokens=2048)["rows"][0]["datasets"]["pydoc"]
    again = evaluate_data([final], ["pydoc"], tokens=2048)["rows"][0]["datasets"]["pydoc"]
    assert first == again  # masks seeded by block: the same tokens predicted for every checkpoint and call
    assert first["tokens"] == 2048 and 0.1 * 2048 < first["predicted"] < 0.2 * 2048 and 0 <= first["acc"] <= 1
    assert first["ppl"] == pytest.approx(math.exp(first["loss"]))
    with pytest.raises(ValueError, match="lm-evaluation-harness tasks score language models"):
        evaluate_data([final], [], tasks=["wikitext"])
