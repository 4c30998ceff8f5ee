"""KAN checkpoints: save_pretrained -> Auto from_pretrained gives the same modules and the same outputs, with or
without kanformer installed; generate and pipelines work; a checkpoint that does not fit its config is an error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import AUTO_HEAD, build, inputs, output

import kanformer  # noqa: F401  (registers the KAN classes)
from kanformer import FFN, kanify

ARCHS = ["gpt2", "vit", "bert", "llama"]
BASES = ["bspline", "chebyshev", "rational"]


def _kan_model(arch, basis, head=True):
    model = build(arch, head=head)
    kanify(model, basis, match="params", layers=[0, 2])
    if basis == "bspline":  # an adapted grid must survive the round trip too
        ffn = next(m for m in model.modules() if isinstance(m, FFN))
        ffn.update_grid(torch.randn(200, ffn.d_model) * 3)
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("basis", BASES)
def test_round_trip_through_auto_class(arch, basis, tmp_path):
    model, batch = _kan_model(arch, basis), inputs(arch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = getattr(transformers, AUTO_HEAD[arch]).from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    torch.testing.assert_close(output(loaded, batch), output(model, batch), rtol=0, atol=0)
    for m in loaded.modules():  # the loaded grids were checked as they are (what a compiled graph reads of them)
        if hasattr(m, "_uniform_cache"):
            assert m._uniform_cache[0] is m.grid and m._uniform_cache[1] == m.grid._version


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_of_base_models_through_automodel(arch, tmp_path):
    model, batch = _kan_model(arch, "rbf", head=False), inputs(arch)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    torch.testing.assert_close(output(loaded, batch), output(model, batch), rtol=0, atol=0)


_REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    class _NoKanformer(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "kanformer" or name.startswith("kanformer."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, _NoKanformer())
    try:
        import kanformer
        raise SystemExit("kanformer is importable: the test proves nothing")
    except ModuleNotFoundError:
        pass
    import torch, transformers
    for case in json.loads(sys.argv[1]):
        model = getattr(transformers, case["auto"]).from_pretrained(case["dir"], trust_remote_code=True)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        batch = torch.load(case["inputs"])
        with torch.no_grad():
            out = model(**batch)
        torch.save(out.logits, case["out"])
        model.save_pretrained(case["dir"] + "_again")  # saved again from the checkpoint's own copy of the code
        again = getattr(transformers, case["auto"]).from_pretrained(case["dir"] + "_again", trust_remote_code=True)
        with torch.no_grad():
            assert torch.equal(again(**batch).logits, out.logits)
""")


def test_trust_remote_code_without_kanformer(tmp_path):
    cases, expected = [], {}
    for arch, basis in zip(ARCHS, ["bspline", "rational", "chebyshev", "wavelet"], strict=True):
        model, batch = _kan_model(arch, basis), inputs(arch)
        model.save_pretrained(tmp_path / arch)
        torch.save(batch, tmp_path / f"{arch}_in.pt")
        expected[arch] = output(model, batch)
        cases.append({"auto": AUTO_HEAD[arch], "dir": str(tmp_path / arch), "inputs": str(tmp_path / f"{arch}_in.pt"),
                      "out": str(tmp_path / f"{arch}_out.pt")})
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _REMOTE_SCRIPT, json.dumps(cases)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arch in ARCHS:
        torch.testing.assert_close(torch.load(tmp_path / f"{arch}_out.pt"), expected[arch], rtol=0, atol=0)
        # re-saved by the copy of the code transformers loaded (the modules the architecture's file imports), it
        # loaded again and gave the same logits (checked in the subprocess), model card included
        assert {f"{arch}.py", "common.py", "card.py", "kan_layers.py", "kan.py"} <= {
            p.name for p in (tmp_path / f"{arch}_again").glob("*.py")}
        assert (tmp_path / f"{arch}_again" / "README.md").is_file()


def test_portable_files_import_only_torch_transformers_einops_and_each_other(tmp_path):
    """Besides the standard library (POSIX-only modules imported lazily, where they are optional)."""
    import sys

    _kan_model("gpt2", "bspline").save_pretrained(tmp_path)
    allowed = {"torch", "transformers", "einops"} | (set(sys.stdlib_module_names) - {"fcntl", "termios", "pwd"})
    for path in tmp_path.glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith(("import ", "from ")) and not words[1].startswith("."):
                assert words[1].split(".")[0] in allowed, f"{path.name}: {line}"


def test_every_layer_and_model_module_travels_in_a_checkpoint(tmp_path):
    """A new basis (or architecture) file is carried without a list to update: this fails if one is not."""
    package = Path(kanformer.__file__).parent
    expected = {p.name for folder in ("layers", "models") for p in (package / folder).glob("*.py")
                if p.name != "__init__.py"} | {"kan_layers.py"}
    _kan_model("gpt2", "bspline").save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.glob("*.py")} == expected  # (re-saved from a checkpoint's own code: below)


def _tokenizer():
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(topics.values())[:50], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_generate_and_text_generation_pipeline_after_round_trip(tmp_path):
    tokenizer = _tokenizer()
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    kanify(model, "bspline", match="params")
    prompt = tokenizer("The class statement", return_tensors="pt")
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    before = model.generate(**prompt, **greedy)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.generate(**prompt, **greedy), before)
    assert before.shape[1] > prompt["input_ids"].shape[1]
    pipe = transformers.pipeline("text-generation", model=str(tmp_path))
    text = pipe("The class statement", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The class statement") and len(text) > len("The class statement")


def test_image_classification_pipeline(tmp_path):
    from PIL import Image

    model = _kan_model("vit", "chebyshev")
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    pipe = transformers.pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy())
    preds = pipe(image)
    assert {p["label"] for p in preds} <= set(model.config.id2label.values()) and len(preds) == 3


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_weights_that_do_not_fit_the_config_are_a_loud_error(tmp_path):
    model = build("gpt2")
    kanify(model, "bspline", hidden=12, layers=[0], grid_size=5)
    model.save_pretrained(tmp_path)
    _edit_config(tmp_path, lambda c: c["kan"]["ffn_kwargs"].update(grid_size=6))
    with pytest.raises(ValueError, match=r"tensor transformer\.h\.0\.mlp\.ffn\.fc1\.coef: checkpoint shape "
                                         r"\(12, 32, 8\), config builds shape \(12, 32, 9\)"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    _edit_config(tmp_path, lambda c: c["kan"].update(layers=[0, 1], ffn_kwargs={"grid_size": 5}))
    with pytest.raises(ValueError, match=r"missing keys: transformer\.h\.1\.mlp\.ffn\.fc1\.base_weight"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_safetensors_only(tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        _kan_model("gpt2", "bspline").save_pretrained(tmp_path, safe_serialization=False)
