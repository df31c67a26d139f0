"""Adapters to other evaluation tools; each is an optional extra, imported only when used.

    lm_eval   lm-evaluation-harness: `remask-lm-eval --model remask --model_args ckpt=DIR ...`
"""
