"""`rlft models …`: preparing a model on this machine, before any job names it.

``rlft models import-gguf FILE -o DIR`` converts a GGUF file (llama.cpp, Ollama) into a plain Hugging Face
directory once (``rlcore.gguf.convert_gguf``), so jobs load it as an ordinary ``model.name_or_path`` without
dequantising the file at every start. A job may also name the file directly with ``model.gguf_file``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_models_commands(sub: Any) -> None:
    models = sub.add_parser("models", help="prepare models on this machine").add_subparsers(
        dest="models_command", required=True, metavar="COMMAND"
    )
    s = models.add_parser(
        "import-gguf", help="convert a GGUF file (llama.cpp, Ollama) into a Hugging Face model directory"
    )
    s.add_argument("file", metavar="FILE", help="the .gguf file")
    s.add_argument("--output", "-o", required=True, metavar="DIR", help="a new or empty directory")
    s.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights dtype of the saved model (default float32; GGUF blocks are dequantised)",
    )
    s.set_defaults(func=cmd_import_gguf)


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from rlcore.errors import ModelLoadError
    from rlcore.gguf import convert_gguf

    try:
        out = convert_gguf(args.file, args.output, dtype=args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"wrote a Hugging Face model directory to {out}; name it in a job as model.name_or_path: {out}")
    return 0
