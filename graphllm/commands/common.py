"""Flags shared by the subcommands (declared once), their translation into API calls, and error handling."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
import warnings
from typing import TYPE_CHECKING, Callable

from ..errors import GraphLLMError
from ..host import usable_cores
from ..passes.kv_dtype import DEFAULT_KV_DTYPE, kv_dtype_name
from ..pipeline import GraphOptions
from ..runtime.grammar import GrammarSpec
from ..runtime.sampling import CHAT_SAMPLING, SamplingParams

if TYPE_CHECKING:
    from ..runtime.llm import LLM


class HelpFormatter(argparse.HelpFormatter):
    """Help lines that end with the option's default unless they name it already (or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_command(sub: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser: its description in the overview and atop its --help, defaults in every help line."""
    return sub.add_parser(name, help=description, description=description, formatter_class=HelpFormatter)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def process_escapes(text: str) -> str:
    """llama.cpp's escapes: \\n, \\t, \\r, \\\\, \\', \\" and \\xNN become the characters; any other backslash stays."""
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code[1:], 16)) if code[0] == "x" else _ESCAPES[code]
    return re.sub(r"\\(x[0-9a-fA-F]{2}|[ntr'\"\\])", one, text)


def add_escape_arg(p: argparse.ArgumentParser) -> None:
    """--no-escape: take the prompt, --system and --stop literally (llama.cpp's -e is on by default)."""
    p.add_argument("--no-escape", dest="escape", action="store_false",
                   help="do not turn \\n, \\t, \\\\ (and \\r, \\', \\\", \\xNN) in the prompt, --system and "
                        "--stop into characters (default: they are, as llama.cpp does)")


def escaped(a: argparse.Namespace, text: str | None) -> str | None:
    """A command-line text with its escapes processed unless --no-escape was given."""
    return process_escapes(text) if text is not None and a.escape else text


def threads_arg(value: str) -> int | None:
    """-t/--threads: a positive count (capped at the usable cores, with a warning), or -1 for all cores (None)."""
    n = _int(value)
    if n == -1:
        return None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or -1 for all cores), got {n}")
    cores = usable_cores()
    if n > cores:
        warnings.warn(f"--threads {n} exceeds this machine's {cores} usable cores: using {cores}")
        return cores
    return n


def context_arg(value: str) -> int:
    """--max-context: at least 2 tokens (a prompt token and a new one)."""
    n = _int(value)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 tokens, got {n}")
    return n


def seed_arg(value: str) -> int | None:
    """--seed: a non-negative integer, or -1 for a random seed (llama.cpp's convention)."""
    n = _int(value)
    if n < -1:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or -1 for a random seed), got {n}")
    return None if n == -1 else n


def text_arg(value: str) -> str:
    """A text argument (prompt, stop string, system message): must be valid UTF-8."""
    return checked_text(value, "")


def checked_text(value: str, what: str) -> str:
    """``value`` unless it holds undecodable bytes (lone surrogates from argv or a surrogateescape stream)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = value[e.start].encode("utf-8", "surrogateescape")
        message = f"is not valid UTF-8 (byte 0x{raw.hex()} at character {e.start})"
        if what:
            raise GraphLLMError(f"{what} {message}") from None
        raise argparse.ArgumentTypeError(message) from None
    return value


def read_stdin_text() -> str:
    """Standard input as text; invalid UTF-8 is a one-line error naming the byte."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GraphLLMError(f"standard input is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def add_model_arg(p: argparse.ArgumentParser, *, custom_required: bool = False) -> None:
    """-m/--model (fastllm's -p/--path) and --custom: which model and which description of it."""
    p.add_argument("-m", "--model", "-p", "--path", dest="model", default=None,
                   help="an HF folder or a .gguf file (default: SmolLM2-135M-Instruct, downloaded once)")
    p.add_argument("--custom", default=None, required=custom_required,
                   help="a ComputeGraph file whose __model__ replaces the built-in description" +
                   ("" if custom_required else " (default: none)"))


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    """--dtype: the weights' type (quantization is a pass of the pipeline)."""
    p.add_argument("--dtype", default=None,
                   help="weights: float32, float16, bfloat16, int8, int8g<G>, int4, int4g<G>, q5_0, q5_1 (weight-only; "
                        "default: as stored, GGUF Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K blocks and F16/BF16 "
                        "matrices are kept)")


def kv_dtype_arg(value: str) -> str:
    """--kv-dtype: f16/float16 or f32/float32, as the canonical dtype name."""
    try:
        return kv_dtype_name(value)
    except GraphLLMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_kv_dtype_arg(p: argparse.ArgumentParser) -> None:
    """--kv-dtype: the KV cache's element type (a graph attribute: part of the build)."""
    p.add_argument("--kv-dtype", type=kv_dtype_arg, default=None,
                   help=f"KV cache element type: f16 (float16) or f32 (float32) (default: "
                        f"{DEFAULT_KV_DTYPE.replace('float', 'f')}, as llama.cpp's -ctk/-ctv)")


def add_graph_args(p: argparse.ArgumentParser) -> None:
    """How the graph is built: the weights' and the KV cache's dtypes and the pass pipeline."""
    add_dtype_arg(p)
    add_kv_dtype_arg(p)
    p.add_argument("--passes", default=None, type=lambda v: [x for x in v.split(",") if x],
                   help="comma-separated pass pipeline (default: verify, dce, cse, then the merge/fuse passes)")
    p.add_argument("--no-fuse", action="store_true", help="leave out the merge_linears and fuse_* passes (debugging)")


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """Which executor runs the graph, on how many threads."""
    p.add_argument("--executor", default="tvm", choices=["tvm", "reference"],
                   help="tvm: compiled kernels (default); reference: the numpy oracle, for debugging")
    p.add_argument("-t", "--threads", type=threads_arg, default=None,
                   help="kernel threads, at most the usable cores (default and -1: physical cores)")


def device_arg(value: str) -> str:
    """--device: cpu, cuda or cuda:N (the GPU's index)."""
    kind, _, index = value.partition(":")
    if value != "cpu" and (kind != "cuda" or (index and not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {value!r}")
    return value


def cuda_archs_arg(value: str) -> tuple[str, ...]:
    """--cuda-arch: comma-separated sm_XX names."""
    archs = tuple(a.strip() for a in value.split(",") if a.strip())
    if not archs or any(not (a.startswith("sm_") and a[3:].isdigit()) for a in archs):
        raise argparse.ArgumentTypeError(f"expected comma-separated archs such as sm_80,sm_90, got {value!r}")
    return archs


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --cuda-arch: where the kernels run, and which GPU generations a CUDA build is compiled for."""
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default), cuda or cuda:N (needs an NVIDIA GPU with a CUDA 13-capable driver)")
    p.add_argument("--cuda-arch", type=cuda_archs_arg, default=None,
                   help="CUDA builds: comma-separated archs compiled ahead of time by nvcc (default: sm_80,sm_90)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """How the model runs: executor and threads, device, compiled artifact, context length."""
    add_executor_args(p)
    add_device_args(p)
    p.add_argument("-c", "--ctx-size", "--max-context", dest="max_context", type=context_arg, default=None,
                   help="KV cache length in tokens (default: min(model, 4096))")
    p.add_argument("--artifact", default=None,
                   help="a folder written by `graphllm compile` (skips compiling; without -m: its model; default: "
                        "the build cache)")
    add_tuned_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="also say which cached build was loaded")


def add_tuned_arg(p: argparse.ArgumentParser) -> None:
    """--no-tuned: build with the kernels' default knobs even where `graphllm tune` stored better ones."""
    p.add_argument("--no-tuned", action="store_true",
                   help="ignore the tuning database (GRAPHLLM_HOME/tuning) and use the default kernel knobs")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Every flag that picks, builds and runs a model (run, chat, bench, serve)."""
    add_model_arg(p)
    add_graph_args(p)
    add_runtime_args(p)


def graph_options(a: argparse.Namespace, **extra: object) -> GraphOptions:
    """The front door's options from parsed flags (those a subcommand does not declare are left unset)."""
    return GraphOptions(custom=getattr(a, "custom", None), dtype=getattr(a, "dtype", None),
                        passes=getattr(a, "passes", None), no_fuse=getattr(a, "no_fuse", False),
                        kv_dtype=getattr(a, "kv_dtype", None), **extra)


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int, chat: bool = False) -> None:
    """Sampling flags as llama.cpp users know them: greedy by default, or (``chat``) the conversation defaults."""
    default = ("the model's generation_config, else {}" if chat else "{}").format
    greedy = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    shown = CHAT_SAMPLING if chat else greedy
    p.add_argument("--temperature", "--temp", type=float, default=None if chat else greedy["temperature"],
                   help=f"softmax temperature, 0 is greedy (default: {default(shown['temperature'])})")
    p.add_argument("--top-k", type=int, default=None if chat else greedy["top_k"],
                   help=f"sample from the k likeliest tokens, 0 is off (default: {default(shown['top_k'])})")
    p.add_argument("--top-p", type=float, default=None if chat else greedy["top_p"],
                   help=f"nucleus sampling, 1 is off (default: {default(shown['top_p'])})")
    p.add_argument("--repetition-penalty", "--repeat-penalty", type=float,
                   default=None if chat else greedy["repetition_penalty"],
                   help=f"penalty on tokens already seen, 1 is off (default: {default(shown['repetition_penalty'])})")
    p.add_argument("--seed", type=seed_arg, default=None, help="random seed (default and -1: random)")
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help="tokens to generate at most")
    p.add_argument("--stop", action="append", default=[], type=text_arg, help="stop string (repeatable; default: none)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-text tokens")
    p.add_argument("--special", action="store_true", help="print special tokens (<|endoftext|>, ...) as text")
    constrain = p.add_mutually_exclusive_group()
    constrain.add_argument("--json-schema", metavar="FILE", default=None,
                           help="constrain the output to JSON valid against the JSON schema in FILE")
    constrain.add_argument("--grammar", metavar="FILE", default=None,
                           help="constrain the output to the grammar in FILE: llguidance's Lark (/regex/ terminals, "
                                "%%json {schema}) or llama.cpp's GBNF")
    add_escape_arg(p)


def sampling_from_args(a: argparse.Namespace, defaults: dict[str, float] | None = None) -> SamplingParams:
    """SamplingParams from parsed flags (validated); flags left unset (None) take ``defaults`` (chat's)."""
    given = {name: getattr(a, name) for name in CHAT_SAMPLING}
    chosen = {name: value if value is not None else (defaults or CHAT_SAMPLING)[name] for name, value in given.items()}
    return SamplingParams(**chosen, seed=a.seed, max_tokens=a.max_tokens, stop=[escaped(a, s) for s in a.stop],
                          ignore_eos=a.ignore_eos, skip_special_tokens=not a.special,
                          grammar=grammar_from_args(a)).validate()


def grammar_from_args(a: argparse.Namespace) -> GrammarSpec | None:
    """The grammar --json-schema or --grammar names (None without either); a file that cannot be read or a
    schema that is not a JSON object is a one-line error."""
    flag, path = ("--json-schema", a.json_schema) if a.json_schema is not None else ("--grammar", a.grammar)
    if path is None:
        return None
    try:
        text = checked_text(Path(path).read_text(encoding="utf-8", errors="surrogateescape"), f"{flag} {path}")
    except OSError as exc:
        raise GraphLLMError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if flag == "--grammar":
        return GrammarSpec("lark", text)  # GBNF is recognized and converted
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise GraphLLMError(f"{flag} {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GraphLLMError(f"{flag} {path} must hold a JSON schema (an object), got {type(schema).__name__}")
    return GrammarSpec("json_schema", text)


def print_notes(notes: list[str]) -> None:
    """The loader's and the passes' notes, one line each on stderr."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def load_llm(a: argparse.Namespace, num_slots: int = 1, **overrides: object) -> LLM:
    """Load the model the flags name (with num_slots KV-cache slots), printing the loader's notes.

    With --artifact and no -m, the model is the one the artifact was compiled for.
    """
    from ..runtime.llm import LLM

    model = flag_model(a)
    if a.verbose:
        logging.basicConfig(level=logging.INFO, format="note: %(message)s", stream=sys.stderr)
    llm = LLM.load(model, **{**load_kwargs(a, num_slots), **overrides})
    print_notes(llm.notes)
    return llm


def flag_model(a: argparse.Namespace) -> str | os.PathLike | None:
    """The model -m names, else (with --artifact) the one the artifact was compiled for; None: the default model."""
    from ..runtime.builds import artifact_model

    model = artifact_model(a.artifact) if a.model is None and a.artifact is not None else a.model
    check_model_path(model)
    return model


def load_kwargs(a: argparse.Namespace, num_slots: int) -> dict[str, object]:
    """LLM.load's keywords from the model flags."""
    return dict(custom=a.custom, executor=a.executor, max_context=a.max_context, artifact=a.artifact,
                threads=a.threads, device=a.device, cuda_archs=a.cuda_arch, dtype=a.dtype, kv_dtype=a.kv_dtype,
                passes=graph_options(a).pipeline(), num_slots=num_slots, show_progress=sys.stderr.isatty(),
                tuned=not a.no_tuned)


def check_model_path(model: str | os.PathLike | None) -> None:
    """A -m/-p argument that is no file but reads like a prompt gets an error saying the prompt is positional."""
    if model is None or Path(model).exists():
        return
    text = str(model)
    if " " in text and "/" not in text and os.sep not in text and not Path(text).suffix:
        raise GraphLLMError(f"-m/-p takes a model path, and {text!r} is none: the prompt is positional "
                            f"(graphllm run \"{text}\"; fastllm's -p is the model's path)")


def run_main(func: Callable[[], int]) -> int:
    """Run a command body: user errors print one line and exit 2, Ctrl-C exits 130, never a traceback."""
    try:
        return func()
    except GraphLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
