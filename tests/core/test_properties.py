"""Property-based tests of every parser of user input: whatever is typed or read, the only exception is a
`UserError`, and what is accepted means what was written. The masks have theirs in test_properties_masks.py."""

from __future__ import annotations

import csv
import io
import json
import math
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from core.cli.main import EXIT_USER_ERROR, main
from core.data.calibration import draw_windows, load_calibration
from core.data.texts import SUPPORTED, read_rows, read_text
from core.errors import UserError
from core.inputs import parse_bytes, parse_globs, parse_overrides, parse_tokens
from core.patterns import Pattern, parse_pattern
from core.pruning.allocation import AllocationOptions
from core.pruning.methods import METHODS
from core.pruning.methods.alps import Options as ALPSOptions
from core.pruning.methods.sparsegpt import Options as SparseGPTOptions
from core.pruning.plan import PrunePlan
from core.recovery.options import RecoveryOptions

PARSERS = settings(max_examples=200, deadline=None)
FILES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings that look like what the parsers read (digits, separators, units) as well as any text at all.
_SYMBOLS = st.sampled_from(list("0123456789.,:=-+_ eEkKmMgGtTiIbB*\t\n") + ["nan", "inf", "٣", "\u2028", "1e400"])
typed = st.one_of(st.text(max_size=40), st.lists(_SYMBOLS, max_size=20).map("".join))
digits = st.text("0123456789", min_size=1, max_size=5000)      # int() refuses more than 4300 digits
numbers = st.one_of(st.floats(), st.integers(-10, 10), st.none())


def only_user_errors(parse, *args):
    """parse(*args), or None where it refuses with a UserError (any other exception fails the test)."""
    try:
        return parse(*args)
    except UserError as exc:
        assert str(exc).strip(), "a UserError says what is wrong"
        return None


# --- overrides, globs, token counts, sizes, patterns -------------------------------------------------------


@PARSERS
@given(st.lists(typed, max_size=5))
def test_overrides_parse_into_nonblank_globs_and_numbers_or_refuse(items):
    parsed = only_user_errors(parse_overrides, items)
    if parsed is not None:
        assert len(parsed) == sum(1 for item in items if item.strip())
        assert all(isinstance(g, str) and g == g.strip() and g and isinstance(v, float) for g, v in parsed)


@PARSERS
@given(st.lists(st.tuples(st.text(min_size=1).filter(str.strip), st.floats(allow_nan=False)), max_size=5))
def test_overrides_written_as_glob_equals_value_read_back(pairs):
    assert parse_overrides([f"{glob}={value!r}" for glob, value in pairs]) == tuple((g.strip(), v) for g, v in pairs)


@PARSERS
@given(typed)
def test_globs_are_the_nonblank_comma_separated_items(text):
    globs = parse_globs(text)
    assert all(g and g == g.strip() and "," not in g for g in globs)
    assert list(globs) == [g.strip() for g in text.split(",") if g.strip()]


@PARSERS
@given(typed, st.text(max_size=10))
@example("9" * 5000, "--tokens")
def test_token_lists_are_positive_counts_or_refused(text, what):
    tokens = only_user_errors(parse_tokens, text, what)
    if tokens is not None:
        assert tokens and all(isinstance(t, int) and t >= 1 for t in tokens)


@PARSERS
@given(st.lists(st.integers(1, 10**12), min_size=1, max_size=8), st.sampled_from([",", ", ", " ,", ",,"]))
def test_token_lists_read_back(tokens, sep):
    assert parse_tokens(sep.join(map(str, tokens))) == tuple(tokens)


_UNIT = st.sampled_from(["", "b", "B", "k", "KB", "kib", "M", "mb", "MiB", "g", "GB", "GiB", "t", "TB", "TiB", "x"])


@PARSERS
@given(st.one_of(typed, st.builds(lambda d, f, s, u: f"{d}{f}{s}{u}", digits, st.sampled_from(["", ".", ".5", ".001"]),
                                  st.sampled_from(["", " "]), _UNIT)))
@example("1" + "0" * 400 + "GB")   # a float overflowing to infinity
@example("0.1")                    # a tenth of a byte
def test_sizes_are_whole_positive_byte_counts_or_refused(text):
    size = only_user_errors(parse_bytes, text)
    if size is not None:
        assert isinstance(size, int) and size >= 1


@PARSERS
@given(st.integers(1, 10**6), st.sampled_from([("", 1), ("B", 1), ("kb", 10**3), ("MB", 10**6), ("GB", 10**9),
                                               ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)]))
def test_sizes_read_back(count, unit):
    assert parse_bytes(f"{count}{unit[0]}") == count * unit[1]


@PARSERS
@given(st.one_of(typed, st.builds(lambda n, m, s: f"{s}{n}{s}:{s}{m}{s}", digits, digits, st.sampled_from(["", " "])),
                st.builds(lambda h, w, s: f"blocks{s}:{h}{s}x{w}", digits, digits, st.sampled_from(["", " "])),
                st.sampled_from(["rows", "columns", " rows ", "Rows", "row", "blocks:", "blocks:64"])))
@example("9" * 5000 + ":1")
@example("blocks:" + "9" * 5000 + "x1")
def test_patterns_are_unstructured_n_of_m_with_0_lt_n_lt_m_or_whole_units(text):
    pattern = only_user_errors(parse_pattern, text)
    if pattern is not None:
        assert pattern == Pattern() or 0 < pattern.n < pattern.m or pattern.whole_units
        assert pattern.kind != "blocks" or (pattern.height > 0 and pattern.width > 0)
        assert parse_pattern(str(pattern)) == pattern


@PARSERS
@given(st.integers(1, 10**6).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m + 1))), st.integers(1, 4096))
def test_patterns_read_back_and_mean_n_kept_of_m(nm, in_features):
    n, m = nm
    pattern = parse_pattern(f"{n}:{m}")
    assert (pattern.n, pattern.m, str(pattern), parse_pattern(str(pattern))) == (n, m, f"{n}:{m}", pattern)
    assert pattern.sparsity == pytest.approx(1 - n / m) and pattern.fits(in_features) == (in_features % m == 0)


@PARSERS
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 4096))
def test_block_patterns_read_back_and_fit_any_layer(height, width, in_features):
    pattern = parse_pattern(f"blocks:{height}x{width}")
    assert (pattern.kind, pattern.height, pattern.width, str(pattern)) == ("blocks", height, width, f"blocks:{height}x{width}")
    assert parse_pattern(str(pattern)) == pattern and pattern.sparsity is None and pattern.fits(in_features)


# --- the user's text files, as arbitrary bytes ---------------------------------------------------------------

_JSONISH = st.sampled_from(['{', '}', '[', ']', '"text"', '"', ':', ',', '1', '-', 'null', 'NaN', '\n', '\r', ' ',
                            '\u2028', '\ufeff', 'é', '\\', '\\u00', 'text', '\x00'])
contents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.lists(_JSONISH, max_size=40).map(lambda t: "".join(t).encode()),
    st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * (n % 3)),                     # nested too deep for json
    st.builds(lambda d: b'{"text": 1, "n": ' + d.encode() + b"}", st.text("0123456789", min_size=4000, max_size=5000)),
)


@FILES
@given(contents, st.sampled_from(SUPPORTED), st.sampled_from(["text", "body", "", "é"]))
@example(b"[" * 100_000, ".json", "text")
@example(b'{"text": ' + b"9" * 5000 + b"}\n", ".jsonl", "text")
def test_every_reader_gives_rows_of_text_or_a_user_error(tmp_path_factory, data, suffix, field):
    path = tmp_path_factory.mktemp("bytes") / f"data{suffix}"
    path.write_bytes(data)
    rows = only_user_errors(read_rows, path, field)
    if rows is not None:
        assert isinstance(rows, list) and all(isinstance(r, str) for r in rows)
        assert read_text(path, field) == "\n\n".join(rows)


documents = st.lists(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))), max_size=5)


def _write(path, texts, bom):
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.write_table(pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())}), path)
    if path.suffix == ".csv":
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(records)
        text = out.getvalue()
    elif path.suffix == ".json":
        text = json.dumps(records, ensure_ascii=False)
    elif path.suffix == ".jsonl":
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    else:
        text = texts[0] if texts else ""
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())


@FILES
@given(documents, st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".txt"]), st.booleans())
@example(["one\u2028two", "three\x85four"], ".jsonl", False)     # line separators inside JSON strings
@example(["a", "b"], ".csv", True)                                 # Excel's byte-order mark before the header
def test_files_written_by_their_usual_writers_read_back_row_for_row(tmp_path_factory, texts, suffix, bom):
    if suffix == ".json" and not texts:
        texts = [""]
    path = tmp_path_factory.mktemp("rows") / f"data{suffix}"
    _write(path, texts, bom and suffix != ".parquet")
    assert read_rows(path) == (texts if suffix != ".txt" else [texts[0] if texts else ""])


# --- calibration: the user's numbers, and text of any kind ---------------------------------------------------


@lru_cache(maxsize=1)
def _tokenizer():
    from tests.tiny_models import tiny_tokenizer

    return tiny_tokenizer()


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)), st.integers(-3, 12),
       st.integers(-3, 120), st.one_of(st.integers(-10, 10), st.integers()), st.sampled_from([".txt", ".jsonl"]))
@example(b"x" * 100, 2, 8, 2**64, ".txt")
def test_calibration_draws_windows_of_the_asked_size_or_refuses(tmp_path_factory, data, nsamples, seqlen, seed, suffix):
    path = tmp_path_factory.mktemp("calib") / f"calib{suffix}"
    path.write_bytes(data)
    calib = only_user_errors(lambda: load_calibration([path], _tokenizer(), nsamples=nsamples, seqlen=seqlen, seed=seed))
    if calib is not None:
        assert (calib.nsamples, calib.seqlen, len(calib.starts)) == (nsamples, seqlen, nsamples)
        assert all(0 <= s <= calib.tokens_found - seqlen for s in calib.starts)


@PARSERS
@given(st.integers(0, 50), st.integers(1, 5), st.integers(-3, 60), st.integers())
def test_windows_are_slices_of_the_stream_at_their_starts(length, nsamples, seqlen, seed):
    stream = torch.arange(length)
    drawn = only_user_errors(draw_windows, stream, nsamples, max(seqlen, 1), seed)
    if drawn is not None:
        windows, starts = drawn
        assert windows.shape == (nsamples, max(seqlen, 1))
        assert all(torch.equal(w, stream[s:s + max(seqlen, 1)]) for w, s in zip(windows, starts))


# --- the pruning plan: everything a user chooses, validated once ---------------------------------------------


# Every field a valid value, then up to three of them anything at all: most plans are accepted, so a value
# outside its range that slips through validation is found, not hidden behind another field's refusal.
_VALID = {"method": st.sampled_from(list(METHODS)), "sparsity": st.one_of(st.none(), st.floats(0, 0.99)),
          "pattern": st.sampled_from(["unstructured", "2:4", "4:8", "1:4", " 2 : 4 ", ""]),
          "overrides": st.lists(st.builds("{}={}".format, st.sampled_from(["*.mlp.*", "q_proj", "0.*"]),
                                          st.floats(0, 0.99)), max_size=2),
          "ignore": st.one_of(st.just(()), st.sampled_from(["*.0.*", "a, b,"]), st.lists(st.just("*o_proj"), max_size=2)),
          "blocksize": st.sampled_from([8, 64, 128]), "dampening": st.floats(0.001, 1), "rho": st.floats(0.01, 10),
          "ridge": st.floats(0, 1), "iterations": st.integers(0, 5), "every": st.integers(1, 3),
          "allocation": st.sampled_from(["uniform", "owl"]), "owl_lambda": st.floats(0, 0.1),
          "batch_size": st.integers(0, 4), "device": st.sampled_from(["auto", "cpu", ""])}
_WILD = {"method": st.text(max_size=8), "sparsity": numbers, "pattern": typed,
         "overrides": st.one_of(st.text(max_size=20), st.lists(st.one_of(typed, st.builds("{}={}".format, typed,
                                                                                           st.floats())), max_size=3)),
         "ignore": st.one_of(typed, st.lists(typed, max_size=3)), "blocksize": st.integers(-2, 300),
         "dampening": st.floats(), "rho": st.floats(), "ridge": st.floats(), "iterations": st.integers(-2, 5),
         "every": st.integers(-1, 3), "allocation": st.text(max_size=5), "owl_lambda": st.floats(),
         "batch_size": st.integers(-2, 4), "device": st.sampled_from(["cpu:0", "mps", "x", "cuda:-1", "cpu:a"])}
_DEFAULTS = {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "overrides": [], "ignore": (),
             "blocksize": 128, "dampening": 0.01, "rho": 0.1, "ridge": 0.01, "iterations": 3, "every": 1,
             "allocation": "uniform", "owl_lambda": 0.08, "batch_size": 0, "device": "cpu"}


@st.composite
def plan_choices(draw):
    wild = draw(st.sets(st.sampled_from(sorted(_VALID)), max_size=3))
    return {k: draw(_WILD[k] if k in wild else _VALID[k]) for k in sorted(_VALID)}


def _build(c):
    overrides = c["overrides"].splitlines() if isinstance(c["overrides"], str) else c["overrides"]  # the studio's box
    return PrunePlan.build(
        method=c["method"], sparsity=c["sparsity"], pattern=c["pattern"], overrides=overrides, ignore=c["ignore"],
        device=c["device"], batch_size=c["batch_size"],
        sparsegpt=SparseGPTOptions(blocksize=c["blocksize"], dampening=c["dampening"]),
        alps=ALPSOptions(rho=c["rho"], ridge=c["ridge"], max_iterations=c["iterations"], update_every=c["every"]),
        allocation=AllocationOptions(c["allocation"], c["owl_lambda"]))


@settings(max_examples=250, deadline=None)
@given(plan_choices())
@example({**_DEFAULTS, "method": "alps", "rho": math.nan})     # NaN is not a positive ρ
@example({**_DEFAULTS, "ignore": ["", " "]})                   # typed on the command line as --ignore ""
def test_a_plan_is_built_only_from_values_in_their_ranges(choices):
    plan = only_user_errors(_build, choices)
    if plan is None:
        return
    assert plan.method in METHODS and 0 <= plan.sparsity < 1
    if plan.pattern.structured:
        assert 0 < plan.pattern.n < plan.pattern.m and math.isclose(plan.sparsity, plan.pattern.sparsity)
        assert not plan.overrides and plan.sparsegpt.blocksize % plan.pattern.m == 0
    assert all(glob and 0 <= value < 1 for glob, value in plan.overrides)
    assert all(isinstance(g, str) and g.strip() == g != "" for g in plan.ignore)   # a blank glob matches every layer
    assert 0 < plan.sparsegpt.dampening <= plan.sparsegpt.max_dampening and plan.sparsegpt.blocksize >= 1
    assert plan.alps.rho > 0 and plan.alps.ridge >= 0 and plan.alps.update_every >= 1 and plan.batch_size >= 0
    if plan.allocation.kind == "owl":
        assert 0 <= plan.allocation.owl_lambda <= 0.5
        assert plan.pattern.structured or plan.allocation.owl_lambda <= plan.sparsity <= 1 - plan.allocation.owl_lambda


# --- the command line: option values that fail before any model opens ---------------------------------------

_OPTIONS = ["--sparsity", "--pattern", "--method", "--nsamples", "--seqlen", "--seed", "--ignore", "--override",
            "--blocksize", "--dampening", "--alps-iterations", "--alps-rho", "--allocation", "--owl-lambda",
            "--owl-threshold", "--recover", "--recover-epochs", "--recover-steps", "--recover-lr", "--recover-batch",
            "--batch-size", "--memory-budget", "--device", "--dtype", "--quantize", "--group-size", "--format",
            "--gguf-type", "--text-field", "--quant-method"]
_VALUES = st.one_of(typed, st.sampled_from(["0.5", "2:4", "nan", "inf", "-1", "0", "4GB", "1e400", "sparsegpt", "owl",
                                            "int4", "gguf", "cpu", "cuda", "99999999999999999999999"]))
# argparse answers --help (and any prefix of it, such as --he) by printing the usage and exiting, as it should.
_NOT_HELP = _VALUES.filter(lambda v: not v.strip().startswith(("-h", "--h")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_OPTIONS), _NOT_HELP), max_size=4))
@example([("--memory-budget", "1" + "0" * 400 + "GB")])
def test_prune_options_of_any_value_end_in_a_user_error_before_the_model_opens(tmp_path_factory, choices):
    folder = tmp_path_factory.mktemp("cli")
    argv = ["prune", "demo", "--calib", str(folder / "missing.txt"), "--out", str(folder / "out")]
    argv += [token for option, value in choices for token in (option, value)]
    assert main(argv) == EXIT_USER_ERROR        # the calibration file is missing, if nothing else is wrong


ANY_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))


@PARSERS
@given(mode=st.sampled_from(["blockwise", "e2e", "none", "nope"]), epochs=ANY_NUMBER,
       steps=st.integers(-5, 10**6), learning_rate=ANY_NUMBER, batch=st.integers(-3, 64),
       windows=st.integers(1, 4096))
@example(mode="blockwise", epochs=float("nan"), steps=0, learning_rate=1e-4, batch=4, windows=128)
@example(mode="blockwise", epochs=float("inf"), steps=0, learning_rate=1e-4, batch=4, windows=128)
def test_recovery_options_are_refused_or_give_a_whole_number_of_steps(mode, epochs, steps, learning_rate, batch,
                                                                        windows):
    options = RecoveryOptions(mode, epochs=epochs, steps=steps, learning_rate=learning_rate, batch_windows=batch)
    try:
        options.validate()
    except UserError:
        return
    if options.enabled:
        total = options.total_steps(windows)
        assert isinstance(total, int) and total >= 1
        assert math.isfinite(options.learning_rate) and options.learning_rate > 0
