"""Tokenizer: real SmolLM2 GGUF vs transformers' ids, HF folders, SentencePiece GGUFs, chat templates, streaming."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import gguf
import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from graphllm.errors import ConfigError, GenerationError, ModelLoadError
from graphllm.io.tokenizer import Tokenizer

# ids and texts produced by transformers 5.24 / tokenizers 0.23.3 from the same GGUF
TRANSFORMERS_IDS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "def fibonacci(n):": [1604, 3987, 46477, 24, 94, 727],
    "Once upon a time, there was": [6403, 1980, 253, 655, 28, 665, 436],
    "The answer is: 2018-01-22 12:12:53.": [504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33, 29, 34, 34, 216, 33,
                                            34, 42, 33, 34, 42, 37, 35, 30],
    "\n    if n == 0:\n        return 1\n    return n * fibonacci(n - 1)\n\n# Test the function\nprint(": [
        472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 304, 1672, 3987, 46477, 24, 94, 731, 216, 33,
        25, 198, 198, 19, 4246, 260, 1517, 198, 3272, 24],
}
CHAT_TEXT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
             "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
CHAT_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182,
            2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198]
GENERATED = ([504, 2988, 288, 451, 8170, 4119, 1732, 314, 216, 36, 30, 2],
             "The answer to this classic math problem is 4.<|im_end|>")
ROUND_TRIP = ["héllo wörld — 日本語 🤖 ok", "line 1\n\n  line 2\r\n\ttab",
              "def f(x):\n    return x ** 2  # 12345\n", "many     spaces   ", " leading space", "<|im_start|>user\nhi<|im_end|>", "emoji 👩‍💻 and ZWJ", ""]


def byte_level_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# ---------------------------------------------------------------- the real model
def test_real_encode_matches_transformers(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    for text, ids in TRANSFORMERS_IDS.items():
        assert tok.encode(text) == ids  # no BOS: tokenizer.ggml.add_bos_token is False
    assert not tok.add_bos and tok.bos_token_id == 1 and tok.eos_token_ids == [2] and tok.vocab_size == 49152


def test_real_round_trip(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    for text in ROUND_TRIP:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(GENERATED[0]) == GENERATED[1]
    assert tok.decode(GENERATED[0], skip_special_tokens=True) == GENERATED[1].removesuffix("<|im_end|>")


def test_real_chat_template(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert text == CHAT_TEXT
    assert tok.encode(text, add_special_tokens=False) == CHAT_IDS
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=False)
    assert no_prompt == CHAT_TEXT.removesuffix("<|im_start|>assistant\n")


def test_real_stream_decoding(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    text = "naïve 🤖 日本語 — ok 👩‍💻!"
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some ids only complete part of a character and are held back


# ---------------------------------------------------------------- HF folders
def byte_level_tokenizer(special: list[str]) -> HFTokenizer:
    """A byte-level BPE tokenizer with one token per byte and a few merges."""
    chars = byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return hf


def hf_folder(tmp_path: Path, tok_config: dict, post_bos: bool = False) -> Path:
    """A folder with tokenizer.json (+ tokenizer_config.json); BOS by post-processor when asked."""
    hf = byte_level_tokenizer(["<s>", "</s>", "<|im_end|>"])
    if post_bos:
        bos = ("<s>", hf.token_to_id("<s>"))
        hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return tmp_path


def test_hf_folder_tokens_bos_and_eos(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True,
                                  "chat_template": "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"})
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [257]}))
    tok = Tokenizer.from_hf_folder(folder)
    bos, eos, im_end = (tok.hf.token_to_id(t) for t in ("<s>", "</s>", "<|im_end|>"))
    assert tok.bos_token_id == bos and tok.add_bos
    assert tok.eos_token_ids == [257, eos, im_end]  # generation_config, tokenizer_config, template's end of turn
    ids = tok.encode("hello")
    assert ids[0] == bos and tok.decode(ids[1:]) == "hello" and len(ids) == 2
    assert tok.encode("hello", add_special_tokens=False) == ids[1:]
    assert tok.encode("<s>hello") == ids  # BOS written by a template is not doubled
    assert tok.vocab_size == 256 + 4 + 3


def test_hf_folder_add_bos_inferred_from_post_processor(tmp_path: Path) -> None:
    with_bos = Tokenizer.from_hf_folder(hf_folder(tmp_path, {"bos_token": "<s>"}, post_bos=True))
    assert with_bos.add_bos and with_bos.encode("hi")[0] == with_bos.bos_token_id
    (tmp_path / "b").mkdir()
    without = Tokenizer.from_hf_folder(hf_folder(tmp_path / "b", {"bos_token": "<s>"}))
    assert not without.add_bos and without.bos_token_id is not None
    assert without.encode("hi") == without.encode("hi", add_special_tokens=False)


def test_hf_chat_template_sources(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, {"chat_template": [{"name": "tool_use", "template": "T"},
                                                    {"name": "default", "template": "D{{ messages|length }}"}]})
    assert Tokenizer.from_hf_folder(folder).apply_chat_template([{"role": "user", "content": "x"}]) == "D1"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert Tokenizer.from_hf_folder(folder).apply_chat_template([]) == "J"
    (folder / "chat_template.jinja").write_text("K{{ bos_token }}")
    assert Tokenizer.from_hf_folder(folder).apply_chat_template([]) == "K"


def test_hf_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        Tokenizer.from_hf_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer"):
        Tokenizer.from_hf_folder(tmp_path)
    hf_folder(tmp_path, {})
    (tmp_path / "tokenizer_config.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ConfigError, match=r"tokenizer_config\.json: malformed JSON at line 2"):
        Tokenizer.from_hf_folder(tmp_path)


# ---------------------------------------------------------------- chat template helpers
def template_tokenizer(template: str | None) -> Tokenizer:
    """A byte-level tokenizer with the given chat template."""
    hf = byte_level_tokenizer(["<s>", "</s>"])
    return Tokenizer(hf, bos_token_id=hf.token_to_id("<s>"), eos_token_ids=[hf.token_to_id("</s>")], add_bos=False,
                     chat_template=template)


def test_template_helpers() -> None:
    tok = template_tokenizer(
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}"
        "{% endif %}{{ m | tojson }}{% endfor %}|{{ strftime_now('%Y') }}|{{ tools | length if tools else 0 }}"
        "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    )
    year = datetime.now().strftime("%Y")
    out = tok.apply_chat_template([{"role": "user", "content": "é"}], tools=[1, 2])
    assert out == f'<s>{{"role": "user", "content": "é"}}|{year}|2</s>'
    with pytest.raises(GenerationError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": ""}])


def test_template_errors() -> None:
    with pytest.raises(ConfigError, match="no chat template"):
        template_tokenizer(None).apply_chat_template([])
    with pytest.raises(ConfigError, match="syntax error at line 2"):
        template_tokenizer("ok\n{% for %}").apply_chat_template([])
    with pytest.raises(GenerationError, match="failed on these messages"):
        template_tokenizer("{{ messages[0]['content'] + 1 }}").apply_chat_template([{"content": "x"}])
    sandboxed = template_tokenizer("{{ messages.__class__.__mro__ }}")
    with pytest.raises(GenerationError):
        sandboxed.apply_chat_template([])


# ---------------------------------------------------------------- streaming
def test_stream_decoder_holds_back_partial_characters() -> None:
    tok = template_tokenizer(None)
    ids = tok.encode("aé🤖")  # one id per byte: 1 + 2 + 4 bytes
    assert len(ids) == 7
    decoder = tok.stream_decoder()
    assert [decoder.feed(i) for i in ids] == ["a", "", "é", "", "", "", "🤖"]
    assert decoder.flush() == ""
    cut = tok.stream_decoder(prompt_ids=tok.encode("x"))
    assert [cut.feed(i) for i in ids[3:5]] == ["", ""]
    assert cut.flush() == "\ufffd"  # an unfinished character is flushed as U+FFFD at the end


# ---------------------------------------------------------------- GGUF metadata
def gguf_fields(tmp_path: Path, model: str, tokens: list[str], types: list[int], **extra) -> dict:
    """Write a vocabulary-only GGUF and read its metadata fields back."""
    writer = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, value in extra.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(tmp_path / "vocab.gguf")).fields


SPM_PIECES = {"▁": -1.0, "h": -2.0, "e": -2.0, "l": -2.0, "o": -2.0, "w": -2.0, "r": -2.0, "d": -2.0,
              "he": -3.0, "ll": -3.0, "llo": -4.0, "hello": -5.0, "▁hello": -6.0, "▁h": -7.0,
              "or": -3.0, "ld": -3.0, "wor": -4.0, "world": -5.0, "▁world": -6.0, "▁w": -7.0}


def spm_fields(tmp_path: Path, add_space_prefix: bool = True) -> dict:
    """A SentencePiece-style (tokenizer.ggml.model = llama) vocabulary with byte fallback tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPM_PIECES)
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + list(SPM_PIECES.values())
    return gguf_fields(tmp_path, "llama", tokens, types, token_scores=scores, bos_token_id=1, eos_token_id=2,
                       unk_token_id=0, add_space_prefix=add_space_prefix,
                       chat_template="[INST] {{ messages[0]['content'] }} [/INST]")


def test_gguf_sentencepiece(tmp_path: Path) -> None:
    tok = Tokenizer.from_gguf(spm_fields(tmp_path))
    ids = tok.encode("hello world")
    assert ids[0] == 1 and tok.add_bos  # llama-style GGUFs add BOS by default
    assert [tok.token_text(i) for i in ids[1:]] == ["▁hello", "▁world"]
    for text in ("hello world", "hé wörld", "hello  world\n"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # as transformers decodes Llama ids: the BOS text, then the piece with its space
    assert tok.decode(tok.encode("hé")) == "<s> hé"
    assert tok.decode(tok.encode("hé"), skip_special_tokens=True) == "hé"
    assert [tok.token_text(i) for i in tok.encode("é", add_special_tokens=False)] == ["▁", "<0xC3>", "<0xA9>"]
    assert tok.eos_token_ids == [2]


def test_gguf_sentencepiece_without_space_prefix(tmp_path: Path) -> None:
    tok = Tokenizer.from_gguf(spm_fields(tmp_path, add_space_prefix=False))
    assert [tok.token_text(i) for i in tok.encode("hello world", add_special_tokens=False)] == ["hello", "▁world"]
    assert tok.decode(tok.encode(" hello", add_special_tokens=False)) == " hello"


@pytest.mark.parametrize("pre", ["default", "smollm", "qwen2", "llama-bpe"])
def test_gguf_byte_level_pre_tokenizers(tmp_path: Path, pre: str) -> None:
    chars = byte_level_chars()
    tokens = chars + ["he", "ll", "hell", "hello", "<|im_end|>", "<tool>"]
    types = [1] * 260 + [3, 4]
    merges = ["h e", "l l", "he ll", "hell o"]
    fields = gguf_fields(tmp_path, "gpt2", tokens, types, token_merges=merges, tokenizer_pre=pre, eos_token_id=260,
                         add_bos_token=False)
    tok = Tokenizer.from_gguf(fields)
    assert [tok.token_text(i) for i in tok.encode("hello<tool>")] == ["hello", "<tool>"]
    assert tok.encode("x<|im_end|>")[-1] == 260
    for text in ROUND_TRIP:
        assert tok.decode(tok.encode(text)) == text
    digits = tok.encode("123", add_special_tokens=False)
    assert len(digits) == 3  # one byte per digit here, whatever the split


def test_gguf_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'bert' is not supported"):
        Tokenizer.from_gguf(gguf_fields(tmp_path, "bert", ["a"], [1]))
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        Tokenizer.from_gguf({})
