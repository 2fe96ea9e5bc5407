"""Models that arrive as one GGUF file (llama.cpp, Ollama): loaded dense, trained and saved like any other.

transformers reads a GGUF file through the ``gguf`` package (``from_pretrained(dir, gguf_file=NAME)``). We
always ask it to dequantise (``GgufConfig(dequantize=True)``): quantised blocks cannot be trained, and a
model that still carries the GGUF quantiser refuses ``save_pretrained``, which every checkpoint needs. So a
job may name ``model.gguf_file`` and train directly, and ``rlft models import-gguf FILE -o DIR`` converts
once into a plain Hugging Face directory (safetensors, config, tokenizer) that loads without the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlcore.errors import ModelLoadError

if TYPE_CHECKING:  # the API imports this module (rlcore.modelpolicy) and never loads torch
    import torch
    from torch import nn

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (the format's header)


def is_gguf_file(path: Path) -> bool:
    """True when ``path`` is a regular file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:  # missing, a directory, unreadable
        return False


def check_gguf_file(path: Path, shown: str | None = None) -> None:
    """Raise ``ModelLoadError`` saying what is wrong unless ``path`` is a readable GGUF file."""
    shown = shown or str(path)
    if not path.exists():
        raise ModelLoadError(f"GGUF file {shown!r} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {shown!r} is not a file")
    if not is_gguf_file(path):
        raise ModelLoadError(
            f"{shown!r} is not a GGUF file (it does not start with the GGUF magic bytes): give a .gguf "
            "file written by llama.cpp, Ollama or the gguf package"
        )


def _plain(model: nn.Module) -> nn.Module:
    """Drop what is left of the GGUF quantiser once the weights are dense, so ``save_pretrained`` works."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def load_gguf_causal_lm(
    name_or_path: str, gguf_file: str, revision: str | None, dtype: torch.dtype
) -> nn.Module:
    """A dense, trainable, saveable causal LM from ``gguf_file`` in ``name_or_path`` (directory or hub id)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    local = Path(name_or_path) / gguf_file
    if Path(name_or_path).is_dir():
        check_gguf_file(local, f"{name_or_path}/{gguf_file}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            gguf_file=gguf_file,
            revision=revision,
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
    except ImportError as e:  # transformers needs the gguf package to read the file
        raise ModelLoadError(f"reading a GGUF file needs the gguf package (pip install gguf): {e}") from e
    except Exception as e:
        raise ModelLoadError(f"could not load the GGUF model {gguf_file!r} in {name_or_path!r}: {e}") from e
    return _plain(model)


def convert_gguf(file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the model and tokenizer of the GGUF ``file`` to ``out_dir`` as a plain Hugging Face directory.

    ``out_dir`` must be missing or empty, so that a conversion never mixes with another model's files.
    """
    import torch
    from transformers import AutoTokenizer

    src = Path(file).expanduser()
    check_gguf_file(src, str(file))
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"output directory {str(out_dir)!r} exists and is not empty: give a new one")
    torch_dtype = getattr(torch, dtype)
    model = load_gguf_causal_lm(str(src.parent), src.name, None, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as e:
        raise ModelLoadError(f"could not read the tokenizer stored in {str(file)!r}: {e}") from e
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
