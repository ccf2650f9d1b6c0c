"""Text tokenizer: a sentencepiece model trained on the dataset's captions, plus the special tokens.

What it is: `train_text_model` trains a byte-pair-encoding sentencepiece model on a list of captions and writes
`text.model` and a `text.json` spec beside it; `TextTokenizer` loads that pair and turns captions into ids
(plain, left-padded, or as a padded batch with its mask). Special tokens are ids of their own and never split:
pad (id 0), unk (id 1, unused in practice: unknown characters fall back to their UTF-8 bytes), `<boi>`
(begin-of-image) and one `<fps_R>` token per configured frame rate R. The prompt checks (blank, too long,
special-token text, no text token, not UTF-8) live here too, with one wording for every door a prompt comes in by:
`sample.py`, `cli.py` and the studio.

Normalisation: the model applies NFKC and case folding (sentencepiece's `nmt_nfkc_cf` rule) and collapses runs of
whitespace, so `encode("A  Red circle") == encode("a red circle")` and `decode(encode(c))` gives the lower-case,
single-spaced form of `c`. For the lower-case captions of the built-in dataset the round trip is exact.

What it does not know: the sequence layout (where text, fps and BOI go, `model/layout.py`), the frame tokenizer, how
captions are read from disk (`data/captions.py`, used only by the command line).

Where the idea comes from: CogVideo trains on text ids from a shared tokenizer and writes the frame rate as text
("4.0秒"); here a dedicated token per rate replaces it, one that cannot be mis-tokenised. Byte-pair encoding
rather than unigram because on a few hundred short captions unigram keeps almost only single characters, while BPE
learns whole words (a built-in caption becomes ~6 ids instead of ~30).

Command line: `python -m cogvideo_lite.text --data DIR --out DIR [--vocab-size N] [--rates 1,2,4,8]`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import unicodedata
from pathlib import Path

import sentencepiece
import torch

from cogvideo_lite.provenance import sha256_file

logger = logging.getLogger(__name__)

TEXT_SPEC_FILE = "text.json"
TEXT_MODEL_FILE = "text.model"
DEFAULT_RATES = (1, 2, 4, 8)  # CogVideo trained on 1, 2, 4 and 8 frames per second
DEFAULT_VOCAB_SIZE = 1000  # an upper bound: hard_vocab_limit=False lets a small caption set stop earlier
PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
BOI_PIECE = "<boi>"
PAD_ID = 0
UNK_ID = 1
TRAINING_SEED = 0  # sentencepiece's global random generator; training is also single-threaded for determinism
BYTE_PIECES = 256  # byte fallback adds one piece per byte value
EXAMPLE_PROMPT = "a red circle moves left slowly"  # the caption that messages about a bad prompt offer instead
INVISIBLE_CATEGORIES = ("Cc", "Cf")  # Unicode control and format characters (zero-width space, joiners, BOM)


class PromptTooLong(ValueError):
    """A caption needs more text ids than the text length of the sequence layout."""


def fps_piece(rate: int) -> str:
    """The special piece of a frame rate: `<fps_4>` for 4 frames per second."""
    return f"<fps_{rate}>"


def parse_rates(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); positive, distinct integers, else a ValueError naming the value."""
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"rates must be comma-separated integers like '1,2,4,8', got {text!r}") from None
    check_rates(rates)
    return rates


def check_rates(rates: tuple[int, ...]) -> None:
    """Distinct positive rates, each twice the one before once sorted (1, 2, 4, 8): every interpolation round
    doubles the frame rate, so the hierarchy 5 -> 9 -> 17 -> 33 frames needs a doubling set."""
    if not rates or any(rate <= 0 for rate in rates) or len(set(rates)) != len(rates):
        raise ValueError(f"rates must be distinct positive integers, got {rates!r}")
    ordered = sorted(rates)
    if any(high != 2 * low for low, high in zip(ordered, ordered[1:])):
        raise ValueError(f"rates {tuple(rates)!r} do not double: each rate must be twice the one before "
                         f"(e.g. 1,2,4,8), since every interpolation round doubles the frame rate")


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

def special_piece_count(rates: tuple[int, ...]) -> int:
    """Pieces a text model holds besides bytes and characters: pad, unk, <boi> and one <fps_R> per rate."""
    return 2 + 1 + len(rates)


def train_text_model(captions: list[str], out_path: Path, vocab_size: int, rates: tuple[int, ...]) -> TextTokenizer:
    """Train a BPE sentencepiece model on `captions`; write `out_path` and `text.json` beside it; return it loaded.

    Deterministic: the same captions, vocabulary size and rates give byte-identical model files.
    `vocab_size` is an upper bound (a small caption set yields fewer pieces); it must leave room for the
    256 byte pieces, the special pieces and every distinct character of the captions.
    """
    out_path = Path(out_path)
    rates = tuple(int(rate) for rate in rates)
    check_rates(rates)
    if not captions:
        raise ValueError("train_text_model needs at least one caption, got none")
    user_symbols = [BOI_PIECE] + [fps_piece(rate) for rate in rates]
    model_bytes = io.BytesIO()
    sentencepiece.set_random_generator_seed(TRAINING_SEED)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=model_bytes, vocab_size=vocab_size,
            model_type="bpe", hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0,
            normalization_rule_name="nmt_nfkc_cf", pad_id=PAD_ID, pad_piece=PAD_PIECE, unk_id=UNK_ID,
            unk_piece=UNK_PIECE, bos_id=-1, eos_id=-1, user_defined_symbols=user_symbols,
            num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as error:
        raise ValueError(f"sentencepiece could not train a text model with vocab_size={vocab_size} on "
                         f"{len(captions)} captions (the minimum is {BYTE_PIECES} byte pieces + "
                         f"{special_piece_count(rates)} special pieces + the distinct characters): {error}") from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model_bytes.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    spec = {
        "model_file": out_path.name,
        "model_sha256": sha256_file(out_path),
        "model_type": "bpe",
        "normalisation": "nmt_nfkc_cf (NFKC, case folded, whitespace collapsed)",
        "vocab_size": processor.get_piece_size(),
        "rates": list(rates),
        "special_tokens": {piece: processor.piece_to_id(piece) for piece in [PAD_PIECE, UNK_PIECE] + user_symbols},
    }
    (out_path.parent / TEXT_SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    logger.info("trained text model %s: %d pieces from %d captions", out_path, spec["vocab_size"], len(captions))
    return TextTokenizer.load(out_path.parent)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

class TextTokenizer:
    """Captions <-> text ids, with pad, `<boi>` and `<fps_R>` ids. Build with `TextTokenizer.load(directory)`."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, spec: dict):
        self._processor = processor
        self._spec = spec
        self._special_ids = frozenset(spec["special_tokens"].values())

    @classmethod
    def load(cls, directory: Path) -> TextTokenizer:
        """Load `directory/text.json` and the model file it names; the model's sha256 and special ids must match."""
        spec_path = Path(directory) / TEXT_SPEC_FILE
        if not spec_path.is_file():
            raise FileNotFoundError(f"no text tokenizer spec at {spec_path} (train one with python -m cogvideo_lite.text)")
        spec = json.loads(spec_path.read_text())
        model_path = spec_path.parent / spec["model_file"]
        if not model_path.is_file():
            raise FileNotFoundError(f"text model {model_path} named by {spec_path} is missing")
        actual_sha256 = sha256_file(model_path)
        if actual_sha256 != spec["model_sha256"]:
            raise ValueError(f"text model {model_path} has sha256 {actual_sha256} but {spec_path} "
                             f"expects {spec['model_sha256']}")
        processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        for piece, expected_id in spec["special_tokens"].items():
            if processor.piece_to_id(piece) != expected_id:
                raise ValueError(f"text model {model_path}: special piece {piece} has id "
                                 f"{processor.piece_to_id(piece)}, {spec_path} says {expected_id}")
        return cls(processor, spec)

    # -- ids and spec ----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._spec["special_tokens"][PAD_PIECE]

    @property
    def boi_id(self) -> int:
        return self._spec["special_tokens"][BOI_PIECE]

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(self._spec["rates"])

    @property
    def spec(self) -> dict:
        """A copy of `text.json`: model sha256, vocabulary size, rates, special ids (for checkpoint contracts)."""
        return json.loads(json.dumps(self._spec))

    def fps_id(self, rate: int) -> int:
        if rate not in self.rates:
            raise ValueError(f"frame rate {rate!r} has no fps token; this text model knows rates {self.rates}")
        return self._spec["special_tokens"][fps_piece(rate)]

    # -- encoding --------------------------------------------------------------------------------------------------
    def encode(self, caption: str) -> list[int]:
        """Caption -> text ids (no padding, no specials). An empty caption gives []."""
        ids = self._processor.encode(caption)
        if self._special_ids.intersection(ids):
            specials = sorted(self._processor.id_to_piece(i) for i in self._special_ids.intersection(ids))
            raise ValueError(f"caption {caption!r} contains the text of special tokens {specials}")
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text ids -> caption; pad ids are dropped, so decode(encode_padded(c, L)) == decode(encode(c))."""
        return self._processor.decode([int(i) for i in ids if int(i) != self.pad_id])

    def encode_padded(self, caption: str, length: int) -> list[int]:
        """Caption -> exactly `length` ids, left-padded with pad_id; PromptTooLong if it needs more than `length`."""
        ids = self.encode(caption)
        if len(ids) > length:
            raise PromptTooLong(f"caption needs {len(ids)} text tokens but the text length is {length}: {caption!r}")
        return [self.pad_id] * (length - len(ids)) + ids

    def encode_batch(self, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids int64 (B, L), pad_mask bool (B, L), True at padding). An empty caption is all padding."""
        ids = torch.tensor([self.encode_padded(caption, length) for caption in captions],
                           dtype=torch.long).reshape(len(captions), length)  # (B, L)
        return ids, ids == self.pad_id


# ----------------------------------------------------------------------------------------------------------------
# Prompt checks: one wording for every door a prompt comes in by (sample.py, the studio)
# ----------------------------------------------------------------------------------------------------------------

def not_utf8(error: UnicodeDecodeError) -> str:
    """'not UTF-8 text (byte 0xe9 at offset 12)': where bytes failed to decode, for a message."""
    return f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"


def is_blank(text: str) -> bool:
    """True when nothing of `text` would show: only whitespace and invisible characters (zero-width space, BOM)."""
    return all(char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES for char in text)


def blank_prompt_problem(prompt: str, where: str, example: str = f"'{EXAMPLE_PROMPT}'") -> str | None:
    """The message for a prompt of which nothing would show, else None. `where` names the prompt ('--prompt number
    2'); `example` is how the caller's user gives one (`--prompt '...'` on a command line)."""
    return f"{where} is empty; give a caption like {example}" if is_blank(prompt) else None


def prompt_token_problem(tokenizer: TextTokenizer, prompt: str, length: int, where: str) -> str | None:
    """The message for a prompt that cannot condition a model of `length` text positions, else None: it needs more
    tokens, holds a special token's text, or gives no text token at all (an unconditional video)."""
    try:
        ids = tokenizer.encode_padded(prompt, length)
    except PromptTooLong as error:
        return f"{where}: {error}; shorten it"
    except ValueError as error:
        return f"{where}: {error}; remove that text from the caption"
    if all(token == tokenizer.pad_id for token in ids):
        return (f"{where} is empty to the text model ({prompt!r} gives no text tokens); give a caption like "
                f"'{EXAMPLE_PROMPT}'")
    return None


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def minimum_vocab_size(captions: list[str], rates: tuple[int, ...]) -> int:
    """The fewest pieces sentencepiece accepts for `captions`: the byte pieces, the special pieces (pad, unk, <boi>,
    one <fps_R> per rate) and one piece per distinct character after normalisation (its whitespace mark included)."""
    normaliser = sentencepiece.SentencePieceNormalizer(rule_name="nmt_nfkc_cf")
    characters = set().union(*(normaliser.normalize(caption) for caption in captions))
    return BYTE_PIECES + special_piece_count(rates) + len(characters)


def main(argv: list[str] | None = None) -> None:
    from cogvideo_lite import cli  # here, not at the top: cli imports this module's prompt checks
    from cogvideo_lite.data.captions import load_entries

    parser = argparse.ArgumentParser(description="Train the caption tokenizer (sentencepiece) of a dataset.")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with captions.jsonl or captions.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives text.model and text.json")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help=f"upper bound on the pieces (default %(default)s); at least {BYTE_PIECES} byte pieces + "
                             "the special pieces + the distinct characters of the captions")
    parser.add_argument("--rates", type=cli.rates_argument, default=DEFAULT_RATES,
                        help="frame rates with an fps token")
    args = parser.parse_args(argv)
    cli.setup_logging()

    with cli.user_errors(parser, prefix="argument --data"):  # no captions file, or two of them
        entries, problems = load_entries(args.data)
    for problem in problems:
        logger.warning("skipped caption entry %s: %s", problem.path, problem.reason)
    if not entries:
        raise SystemExit(f"no usable captions in {args.data} ({len(problems)} problems)")
    captions = [entry.caption for entry in entries]
    minimum = minimum_vocab_size(captions, args.rates)
    if args.vocab_size < minimum:
        parser.error(f"--vocab-size {args.vocab_size}: these {len(captions)} captions need at least {minimum} pieces "
                     f"({BYTE_PIECES} byte pieces + {special_piece_count(args.rates)} special pieces + "
                     f"{minimum - BYTE_PIECES - special_piece_count(args.rates)} distinct characters); it is an upper "
                     f"bound, so a larger value (default {DEFAULT_VOCAB_SIZE}) is safe")
    with cli.user_errors(parser, ValueError, prefix=f"--vocab-size {args.vocab_size}"):
        tokenizer = train_text_model(captions, args.out / TEXT_MODEL_FILE, args.vocab_size, args.rates)
    lengths = []
    for entry in entries:
        try:
            lengths.append(len(tokenizer.encode(entry.caption)))
        except ValueError as error:  # special-token text: prepare and check --text refuse this caption
            logger.warning("caption of %s will be refused: %s", entry.video, error)
    print(f"text model {args.out / TEXT_MODEL_FILE}: {tokenizer.vocab_size} ids, rates {tokenizer.rates}, "
          f"{len(entries)} captions (longest {max(lengths, default=0)} tokens), {len(problems)} entries skipped")


if __name__ == "__main__":
    main()
