"""The command line on the tiny fixture model: run, chat, python -m graphllm.chat, and bad input."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphllm.cli import main

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
EXPECTED = json.loads((TINY / "expected.json").read_text())


def cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "graphllm.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_run_streams_the_greedy_completion(capsys):
    from graphllm.runtime.llm import LLM
    from graphllm.runtime.sampling import SamplingParams

    expected = LLM.load(TINY).complete("Hello", SamplingParams(max_tokens=8, ignore_eos=True)).text
    assert main(["run", "-m", str(TINY), "Hello", "-n", "8", "--ignore-eos"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_run_sampling_flags_are_seeded(capsys):
    args = ["run", "-m", str(TINY), "Hello", "-n", "8", "--ignore-eos", "--temperature", "1.5",
            "--top-k", "50", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "7"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first
    main(args[:-1] + ["8"])
    assert capsys.readouterr().out != first


def test_run_stop_string(capsys):
    main(["run", "-m", str(TINY), "Hello", "-n", "12", "--ignore-eos"])
    full = capsys.readouterr().out.rstrip("\n")
    stop = full[3:5]
    main(["run", "-m", str(TINY), "Hello", "-n", "12", "--ignore-eos", "--stop", stop])
    assert capsys.readouterr().out.rstrip("\n") == full[:full.find(stop)]


def test_chat_keeps_history_and_resets():
    r = cli("chat", "-m", str(TINY), "-n", "4", "--temperature", "0",
            stdin="hi\nagain\n/reset\nhi\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "(conversation cleared)" in lines
    replies = [line for line in lines if line != "(conversation cleared)"]
    assert len(replies) == 3 and replies[0] == replies[2]  # after /reset the same turn gives the same reply


def test_python_m_graphllm_chat_fastllm_style():
    r = subprocess.run([sys.executable, "-m", "graphllm.chat", "-t", "2", "-p", str(TINY), "-n", "3"],
                       input="hi\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


@pytest.mark.parametrize("args, needle", [
    (["run", "-m", "/nonexistent/model", "x"], "/nonexistent/model"),
    (["run", "-m", str(TINY), "x", "--custom", "/nonexistent/m.py"], "does not exist"),
    (["run", "-m", str(TINY), "x", "--top-p", "0"], "top_p"),
    (["run", "-m", str(TINY), "x" * 3000, "--max-context", "64"], "context holds 64"),
])
def test_bad_input_is_one_clear_line(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert needle in r.stderr and r.stderr.splitlines()[-1].startswith("error: ")


def test_broken_model_folders(tmp_path):
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text('{"model_type": "llama",')
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((TINY / "config.json").read_text())
    alien = tmp_path / "alien"
    alien.mkdir()
    for f in TINY.iterdir():
        (alien / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (alien / "config.json").write_text(json.dumps(cfg))
    for folder, needle in [(bad_json, "config.json"), (no_weights, "safetensors"), (alien, "mamba"),
                           (tmp_path, "config.json")]:
        r = cli("run", "-m", str(folder), "x")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "argument -t/--threads: must be >= 1 (or -1 for all cores), got 0"),
    (["-t", "-2"], "argument -t/--threads: must be >= 1 (or -1 for all cores), got -2"),
    (["--max-context", "-1"], "argument -c/--ctx-size/--max-context: must be >= 2 tokens, got -1"),
    (["--max-context", "0"], "argument -c/--ctx-size/--max-context: must be >= 2 tokens, got 0"),
    (["--seed", "-5"], "argument --seed: must be >= 0 (or -1 for a random seed), got -5"),
    (["--threads", "two"], "argument -t/--threads: expected an integer, got 'two'"),
])
def test_bad_numbers_are_refused_before_loading(args, message):
    r = cli("run", "-m", str(TINY), "Hello", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_seed_minus_one_is_random_and_threads_are_capped_at_the_cores():
    r = cli("run", "-m", str(TINY), "Hello", "-n", "2", "--seed", "-1", "--temperature", "1", "--threads", "1000",
            "--executor", "reference")
    assert r.returncode == 0, r.stderr
    assert "warning: --threads 1000 exceeds this machine's" in r.stderr and "Traceback" not in r.stderr


def test_invalid_utf8_prompts_are_one_line_errors():
    bad = b"caf\xe9"
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", "run", "-m", str(TINY), "--executor", "reference"],
                       input=bad, capture_output=True, timeout=120)
    assert r.returncode == 2 and b"error: standard input is not valid UTF-8 (byte 0xe9 at offset 3)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", "run", "-m", str(TINY), "--executor", "reference",
                        bad], capture_output=True, timeout=120)
    assert r.returncode == 2 and b"is not valid UTF-8 (byte 0xe9 at character 3)" in r.stderr
    assert b"Traceback" not in r.stderr


def test_chat_survives_an_invalid_utf8_line():
    r = subprocess.run([sys.executable, "-m", "graphllm.chat", "-p", str(TINY), "--executor", "reference", "-n", "2"],
                       input=b"\xff\xfe\nHello\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"error: that line is not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr
    assert r.stdout.strip()  # the next line got a reply


@pytest.mark.parametrize("module", ["graphllm.chat", "graphllm.server", "graphllm.webui"])
def test_fastllm_module_entry_points(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "-p" in r.stdout and "--custom" in r.stdout and "-t" in r.stdout


def test_no_arguments_print_the_overview():
    r = cli()
    assert r.returncode == 0 and r.stdout.startswith("usage: graphllm") and "run" in r.stdout and not r.stderr


def subcommand_parsers():
    from graphllm.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_has_a_help_line_with_its_default():
    for name, parser in subcommand_parsers().items():
        assert parser.description, name
        formatter = parser.formatter_class(parser.prog)
        for action in parser._actions:
            assert action.help, (name, action.option_strings)
            valued = action.option_strings and action.nargs != 0 and not action.required
            if valued and action.default is not None:
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)


def test_help_says_what_chat_samples_with_and_that_run_is_greedy():
    chat_help = " ".join(cli("chat", "--help").stdout.split())
    said = "the model's generation_config, else temperature 0.7, top-p 0.9, top-k 40, repetition penalty 1.1"
    assert said in chat_help
    assert "(default: the model's generation_config, else 0.7)" in chat_help
    run_help = " ".join(cli("run", "--help").stdout.split())
    assert "greedy by default" in run_help and "(default: 0.0)" in run_help
    assert "--top-k" not in " ".join(cli("dump", "--help").stdout.split())  # sampling is not offered where unused


def test_llama_cpp_aliases():
    parsers = subcommand_parsers()
    a = parsers["run"].parse_args(["-c", "64", "x"])
    assert a.max_context == 64 and parsers["chat"].parse_args(["--ctx-size", "32"]).max_context == 32
    assert parsers["serve"].parse_args(["-np", "4"]).max_batch == 4
    assert parsers["serve"].parse_args(["--parallel", "3"]).max_batch == 3


def test_chat_samples_with_the_model_defaults_unless_given():
    from graphllm.runtime.sampling import CHAT_SAMPLING, chat_sampling
    from graphllm.commands.common import sampling_from_args

    model = chat_sampling({"temperature": 0.6, "top_p": 0.95, "top_k": None, "eos_token_id": 2})
    assert model == {**CHAT_SAMPLING, "temperature": 0.6, "top_p": 0.95}
    a = subcommand_parsers()["chat"].parse_args(["--top-k", "5"])
    params = sampling_from_args(a, model)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.6, 0.95, 5, 1.1)
    greedy = sampling_from_args(subcommand_parsers()["run"].parse_args(["x"]))
    assert (greedy.temperature, greedy.top_k, greedy.top_p, greedy.repetition_penalty) == (0.0, 0, 1.0, 1.0)


@pytest.mark.parametrize("text, expected", [
    (r"a\nb", "a\nb"), (r"tab\there", "tab\there"), (r"back\\n", "back\\n"), (r"q\"x\'", "q\"x'"),
    (r"\x41\r", "A\r"), (r"\q stays", "\\q stays"), ("plain", "plain"),
])
def test_escapes_as_llama_cpp(text, expected):
    from graphllm.commands.common import process_escapes

    assert process_escapes(text) == expected


def test_prompt_stop_and_system_escapes_and_no_escape(capsys):
    base = ["run", "-m", str(TINY), "-n", "8", "--ignore-eos", "--executor", "reference"]
    main([*base, "Hello\\nworld", "--echo"])
    assert capsys.readouterr().out.startswith("Hello\nworld")
    main([*base, "Hello\\nworld", "--echo", "--no-escape"])
    assert capsys.readouterr().out.startswith("Hello\\nworld")
    main([*base, "Hello", "--system", "Be\\tbrief", "--echo"])
    echoed = capsys.readouterr().out
    assert "Be\tbrief" in echoed and "Hello" in echoed and echoed.index("Be\tbrief") < echoed.index("Hello")
    a = subcommand_parsers()["run"].parse_args(["x", "--stop", "\\n\\n"])
    from graphllm.commands.common import sampling_from_args

    assert sampling_from_args(a).stop == ["\n\n"]


def test_dash_p_with_a_prompt_says_the_prompt_is_positional():
    r = cli("run", "-p", "What is the capital of France")
    assert r.returncode == 2 and "the prompt is positional" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", "-p", "/nonexistent/model.gguf", "x")
    assert r.returncode == 2 and "positional" not in r.stderr
