"""Cheap text augmentation: word dropout, adjacent swaps and character typos."""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

_LETTERS = np.array(list(string.ascii_lowercase))


def _check_prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _typo(word: str, rng: np.random.Generator) -> str:
    """One random edit: substitute, insert, delete or transpose (delete/transpose need two characters)."""
    kinds = ["substitute", "insert"] + (["delete", "transpose"] if len(word) >= 2 else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    letter = str(_LETTERS[int(rng.integers(len(_LETTERS)))])
    if kind == "substitute":
        i = int(rng.integers(len(word)))
        if letter == word[i]:  # a substitution must change the word
            letter = chr((ord(letter) - ord("a") + 1) % 26 + ord("a"))
        return word[:i] + letter + word[i + 1 :]
    if kind == "insert":
        i = int(rng.integers(len(word) + 1))
        return word[:i] + letter + word[i:]
    if kind == "delete":
        i = int(rng.integers(len(word)))
        return word[:i] + word[i + 1 :]
    i = int(rng.integers(len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _augment_one(text: str, rng: np.random.Generator, word_dropout: float, swap_prob: float, typo_prob: float) -> str:
    words = text.split()
    if not words:
        return text  # empty or whitespace-only: nothing to perturb
    n = len(words)
    keep = rng.random(n) >= word_dropout
    if not keep.any():
        keep[int(rng.integers(n))] = True  # a text never loses all its words
    words = [w for w, k in zip(words, keep) if k]
    # Left-to-right swaps; a word that just moved is not swapped again, so swaps stay local.
    swap = rng.random(max(len(words) - 1, 0)) < swap_prob
    i = 0
    while i < len(words) - 1:
        if swap[i]:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    typo = rng.random(len(words)) < typo_prob
    words = [_typo(w, rng) if t else w for w, t in zip(words, typo)]
    return " ".join(words)


def augment_texts(
    texts: Sequence[str], seed: int = 0, word_dropout: float = 0.1, swap_prob: float = 0.1, typo_prob: float = 0.05
) -> list[str]:
    r"""One augmented copy of each text.

    Texts are split on whitespace and re-joined with single spaces. Then, independently:

    * each word is dropped with probability ``word_dropout`` (if all would go, one random word stays);
    * each adjacent pair :math:`(w_i, w_{i+1})` is swapped with probability ``swap_prob``, scanning
      left to right and skipping the pair after a swap;
    * each word gets one character typo with probability ``typo_prob``: a random position is
      substituted (by a different lowercase letter), gets a letter inserted, is deleted, or is
      transposed with its neighbour (the last two only for words of two or more characters).

    Text :math:`i` uses its own generator seeded with ``(seed, i)``, so the output for a text depends
    only on the seed and its position, not on the other texts. Empty and whitespace-only strings are
    returned unchanged.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string")
    word_dropout = _check_prob("word_dropout", word_dropout)
    swap_prob = _check_prob("swap_prob", swap_prob)
    typo_prob = _check_prob("typo_prob", typo_prob)
    out: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        rng = np.random.default_rng([int(seed), i])
        out.append(_augment_one(text, rng, word_dropout, swap_prob, typo_prob))
    return out
