"""memory_plan: buffer reuse by liveness, views kept alive through their buffer, in-place updates."""

from graphllm.dsl.types import TensorType
from graphllm.plan import BufferValue, InputValue, Step, ValueArg, ViewValue
from graphllm.runtime.memory_plan import plan_memory

F = TensorType((4,))
VALUES = {"$x": InputValue("inputIds", F), "%a": BufferValue(F), "%b": BufferValue(F), "%v": ViewValue("%b", F),
          "%c": BufferValue(F), "%d": BufferValue(F), "%e": BufferValue(F)}


def step(node, *args, inplace=None):
    return Step(node, "Op", f"k_{node}", tuple(ValueArg(a) for a in args), inplace=inplace)


def test_dead_buffers_are_reused_and_views_keep_theirs_alive():
    steps = [step("%a", "$x", "%a"), step("%b", "%a", "%b"), step("%c", "%b", "%c"), step("%d", "%v", "%c", "%d"),
             step("%e", "%d", "%e")]
    plan = plan_memory(steps, VALUES, "%e", lambda v: 100)
    b = plan.buffer_of
    assert b["%c"] == b["%a"]  # %a died at step 1
    assert b["%d"] != b["%b"]  # %b is still read at step 3 through its view %v
    assert b["%e"] in (b["%b"], b["%c"]) and plan.naive_bytes == 500 and plan.planned_bytes == 300
    assert plan.in_place == 0


def test_in_place_takes_the_dying_inputs_buffer_only():
    steps = [step("%a", "$x", "%a"), step("%b", "%a", "%b"), step("%c", "%a", "%b", "%c", inplace="%b"),
             step("%d", "%c", "%a", "%d", inplace="%c"), step("%e", "%a", "%d", "%e")]
    plan = plan_memory(steps, VALUES, "%e", lambda v: 64)
    b = plan.buffer_of
    assert b["%c"] == b["%b"]  # %b dies at its in-place step
    assert b["%d"] == b["%c"]  # and so does %c
    assert b["%e"] != b["%a"] and plan.in_place == 2 and len(plan.sizes) == 3
    sizes = {"%a": 64, "%b": 64, "%c": 32, "%d": 64, "%e": 64}
    plan = plan_memory(steps, VALUES, "%e", sizes.__getitem__)
    assert plan.buffer_of["%c"] != plan.buffer_of["%b"]  # another size: no in-place
