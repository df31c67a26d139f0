"""remask: LLaDA-style masked diffusion language models in PyTorch.

    import remask
    result = remask.train(remask.RunConfig(), "runs/demo")          # == `remask train --out runs/demo`
    model, tok = remask.load_model("runs/demo")
    out = remask.decode(model, [tok.encode("def ")], remask.SampleConfig(gen_length=64),
                        mask_id=tok.mask_id, eos_id=tok.eos_id)   # LLaDA's sampler, or AR for a causal model

The command line (``remask.commands``) is a thin layer over these functions.
"""

from remask.config import ModelConfig, RunConfig, TrainConfig
from remask.errors import RemaskError
from remask.model import Transformer, build_model

__version__ = "0.1.0"

_LAZY = {
    "train": "remask.train.loop",
    "load_model": "remask.checkpoint",
    "load_checkpoint": "remask.checkpoint",
    "generate": "remask.sampling",
    "decode": "remask.sampling",
    "SampleConfig": "remask.sampling",
    "ARSampleConfig": "remask.sampling",
    "sft": "remask.sft",
    "infill": "remask.sampling.infill",
    "prepare": "remask.data.prepare",
    "load_tokenizer": "remask.data.tokenizer",
}


def __getattr__(name: str) -> object:  # lazy: `import remask` stays cheap and free of side effects
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'remask' has no attribute {name!r}")


__all__ = ["ModelConfig", "RemaskError", "RunConfig", "TrainConfig", "Transformer", "build_model", *_LAZY]
