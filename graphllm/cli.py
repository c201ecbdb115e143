"""The `graphllm` command: run, chat (more subcommands arrive with their issues)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Sequence

from . import __version__
from .errors import GraphLLMError
from .runtime.sampling import SamplingParams


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags that pick and shape the model: shared by every subcommand that loads one."""
    p.add_argument("-m", "--model", "-p", "--path", dest="model", default=None,
                   help="an HF folder or a .gguf file (default: SmolLM2-135M-Instruct, downloaded once)")
    p.add_argument("--custom", default=None, help="a ComputeGraph file whose __model__ replaces the built-in description")
    p.add_argument("--max-context", type=int, default=None, help="KV cache length in tokens (default: min(model, 4096))")
    p.add_argument("--executor", default="tvm", choices=["tvm", "reference"],
                   help="tvm: compiled kernels (default); reference: the numpy oracle, for debugging")
    p.add_argument("--artifact", default=None, help="a folder written by `graphllm compile` (skips compiling)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: physical cores)")
    p.add_argument("--passes", default=None, type=lambda v: [x for x in v.split(",") if x],
                   help="comma-separated pass pipeline (default: verify, dce, cse, then the merge/fuse passes)")
    p.add_argument("--no-fuse", action="store_true", help="leave out the merge_linears and fuse_* passes (debugging)")
    p.add_argument("--dtype", default=None,
                   help="weights: float32, float16, bfloat16, int8, int8g<G>, int4, int4g<G> (weight-only; "
                        "default: as stored, Q8_0/Q4_0/Q4_1 blocks and F16/BF16 matrices are kept)")


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 128) -> None:
    """Sampling flags as llama.cpp users know them; temperature 0 (the default) is greedy."""
    p.add_argument("--temperature", "--temp", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", "--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-text tokens")


def sampling_from_args(a: argparse.Namespace) -> SamplingParams:
    """SamplingParams from parsed flags (validated)."""
    return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          repetition_penalty=a.repetition_penalty, seed=a.seed, max_tokens=a.max_tokens,
                          stop=list(a.stop), ignore_eos=a.ignore_eos).validate()


def pipeline_from_args(a: argparse.Namespace) -> list[str] | None:
    """The pass pipeline the flags ask for (None = the default one)."""
    from .passes.manager import DEFAULT_PIPELINE, FUSION_PASSES

    if not a.no_fuse:
        return a.passes
    return [p for p in (a.passes or DEFAULT_PIPELINE) if p not in FUSION_PASSES]


def load_llm(a: argparse.Namespace, num_slots: int = 1):
    """Load the model the flags name (with num_slots KV-cache slots), printing the loader's notes."""
    from .runtime.llm import LLM

    llm = LLM.load(a.model, custom=a.custom, executor=a.executor, max_context=a.max_context,
                   artifact=a.artifact, threads=a.threads, dtype=a.dtype, passes=pipeline_from_args(a),
                   num_slots=num_slots, show_progress=sys.stderr.isatty())
    for note in llm.notes:
        print(f"note: {note}", file=sys.stderr)
    return llm


def cmd_run(a: argparse.Namespace) -> int:
    """Complete a prompt, streaming the text to stdout."""
    params = sampling_from_args(a)
    llm = load_llm(a)
    prompt = a.prompt if a.prompt is not None else sys.stdin.read()
    if a.chat_template:
        prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    if a.echo:
        sys.stdout.write(prompt)
    for chunk in llm.stream(prompt, params):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    """Interactive chat with the model's chat template; keeps history; /reset and /exit."""
    from .chat import chat_loop

    params = sampling_from_args(a)
    return chat_loop(load_llm(a), params, system=a.system)


def cmd_compile(a: argparse.Namespace) -> int:
    """Compile the model's kernels into an artifact folder."""
    from .codegen.compile import compile_graph
    from .runtime.builds import host_target
    from .runtime.llm import build_graph
    from .passes.quantize import quantize_weights
    from .io.loader import load_model, weight_types

    if a.target != "cpu":
        raise GraphLLMError(f"target {a.target!r} is not supported yet (supported: cpu)")
    if a.ir:
        from .tools.dump import load_ir

        graph = load_ir(a.ir)
    else:
        model = load_model(a.model)
        graph = build_graph(model.config, weight_types(model, native=a.dtype is None), a.custom,
                            passes=pipeline_from_args(a))
        if a.dtype is not None:
            graph = quantize_weights(graph, a.dtype)
    out = compile_graph(graph, a.output, host_target(), show_progress=sys.stderr.isatty())
    print(f"run it with: graphllm run --artifact {out} -m {a.model or 'MODEL'} \"PROMPT\"")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    """Measure prefill/decode speed of the model on this machine."""
    import json

    from .tools.bench import format_bench, run_bench

    if a.max_context is None:
        a.max_context = a.prompt_tokens + a.gen_tokens + 1
    llm = load_llm(a)
    result = run_bench(llm, a.prompt_tokens, a.gen_tokens, a.repeat)
    print(json.dumps(result, indent=1) if a.json else format_bench(result))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """Write the model with its weights in the asked dtype, so later loads skip quantization."""
    from .tools.export import export_model
    from .runtime.llm import LLM

    llm = LLM.load(a.model, custom=a.custom, executor="reference", dtype=a.dtype, max_context=2)
    out = export_model(llm, a.output, force=a.force)
    print(f"wrote {out} ({llm.model.file_type} -> {a.dtype or 'as stored'}); run it with: graphllm run -m {out} \"PROMPT\"")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    """Perplexity on a text file and the mean KL divergence from the float32 model."""
    from pathlib import Path

    from .tools.evaluate import evaluate
    from .runtime.llm import LLM

    try:
        text = Path(a.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GraphLLMError(f"cannot read --text {a.text}: {e}") from None
    kwargs = dict(custom=a.custom, executor=a.executor, max_context=a.window + 1, max_seqs=a.chunk,
                  threads=a.threads, show_progress=sys.stderr.isatty())
    llm = LLM.load(a.model, dtype=a.dtype, **kwargs)
    ref = None if a.dtype == "float32" else LLM.load(a.model, dtype="float32", **kwargs)
    r = evaluate(llm, text, ref, window=a.window, chunk=a.chunk, max_tokens=a.max_tokens)
    print(f"tokens          {r.tokens}")
    print(f"perplexity      {r.perplexity:.4f}  (--dtype {a.dtype or 'as stored'})")
    if r.mean_kl is not None:
        print(f"float32 ppl     {r.reference_perplexity:.4f}")
        print(f"mean KL         {r.mean_kl:.6f} nats/token vs float32")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="graphllm", description="Describe an LLM as a compute graph; run it.")
    parser.add_argument("--version", action="version", version=f"graphllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="complete a prompt (greedy by default)")
    run.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read stdin)")
    run.add_argument("--chat-template", action="store_true", help="wrap the prompt as one user chat turn")
    run.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_model_args(run)
    add_sampling_args(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="interactive chat (/reset clears history, /exit quits)")
    chat.add_argument("--system", default=None, help="system message")
    add_model_args(chat)
    add_sampling_args(chat, max_tokens=512)
    chat.set_defaults(func=cmd_chat)

    comp = sub.add_parser("compile", help="build the model's kernels with TVM into a folder")
    comp.add_argument("-o", "--output", required=True, help="artifact folder to write")
    comp.add_argument("--target", default="cpu", help="cpu (this host's ISA)")
    comp.add_argument("--ir", default=None,
                      help="compile this text IR file (e.g. from `graphllm dump`) as written, instead of the model's description")
    add_model_args(comp)
    comp.set_defaults(func=cmd_compile)

    bench = sub.add_parser("bench", help="prefill/decode tokens/s, first-token time, memory, bandwidth")
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--gen-tokens", type=int, default=128)
    bench.add_argument("--repeat", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_args(bench)
    bench.set_defaults(func=cmd_bench)

    export = sub.add_parser("export", help="write the model with quantized weights (safetensors + config)")
    export.add_argument("-o", "--output", required=True, help="folder to write")
    export.add_argument("--force", action="store_true", help="replace a non-empty folder")
    add_model_args(export)
    export.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="perplexity of a text file and KL divergence from float32")
    ev.add_argument("--text", required=True, help="a UTF-8 text file")
    ev.add_argument("--window", type=int, default=256, help="tokens per evaluation window (fresh context)")
    ev.add_argument("--chunk", type=int, default=64, help="tokens per step")
    ev.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")
    add_model_args(ev)
    ev.set_defaults(func=cmd_eval)

    from .tools.check import add_check_parser
    from .tools.dump import add_dump_parser
    from .server.app import add_serve_parser

    add_dump_parser(sub)
    add_serve_parser(sub)
    add_check_parser(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `graphllm` console script."""
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"  # one line, as errors are
    parser = build_parser()
    a = parser.parse_args(argv)
    return run_main(lambda: a.func(a))


if __name__ == "__main__":
    sys.exit(main())
