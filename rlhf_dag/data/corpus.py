"""The pretraining corpus: the built-in generator, or the user's own text files."""

from __future__ import annotations

from pathlib import Path

from .domain import pretraining_documents


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if "text" not in frame.columns:
            raise ValueError(f"{path}: a Parquet corpus needs a 'text' column (found: {', '.join(frame.columns)})")
        return [t for t in frame["text"].astype(str) if t.strip()]
    if path.suffix == ".txt":
        # One document per blank-line-separated block.
        return [block.strip() for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]
    raise ValueError(f"{path}: corpus files must be .txt or .parquet")


def load_corpus(source: str, n_documents: int, seed: int) -> list[str]:
    """'synthetic' -> the internet-like generator; else a .txt/.parquet file or a folder of them."""
    if source == "synthetic":
        return pretraining_documents(n_documents, seed)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"pretraining_corpus.source: {path} does not exist (use 'synthetic' or a path to .txt/.parquet)"
        )
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".parquet")) if path.is_dir() else [path]
    documents = [doc for f in files for doc in _read_file(f)]
    if not documents:
        raise ValueError(f"pretraining_corpus.source: no documents found in {path}")
    return documents
