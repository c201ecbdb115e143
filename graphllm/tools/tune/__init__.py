"""The knob tuner behind `graphllm tune`: isolated kernel search, step-level knobs in context, reports."""
