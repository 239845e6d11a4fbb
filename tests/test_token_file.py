"""Token files (fastlm.save_ids / open_ids / `fastlm encode`): format, streaming, memory maps, bad input."""

import struct
import sys
import tracemalloc

import numpy as np
import pytest
from helpers import cli_options, ids_training_options, run_cli

import fastlm
from fastlm import _core, token_file
from fastlm.token_file import HEADER_BYTES

TEXT = "the cat sat on the mat . the dog sat on the log .\nthe end ?\n"


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * token_file.mmap.PAGESIZE


@pytest.mark.parametrize("vocab_size, dtype", [(1, "<u2"), (65536, "<u2"), (65537, "<i4"), (2**31, "<i4")])
def test_narrowest_dtype(tmp_path, vocab_size, dtype):
    ids = np.array([0, vocab_size - 1, vocab_size // 2], dtype=np.int64)
    assert fastlm.save_ids(tmp_path / "ids.bin", ids, vocab_size) == 3
    header = fastlm.read_ids_header(tmp_path / "ids.bin")
    assert header["dtype"] == np.dtype(dtype) and header["vocab_size"] == vocab_size and header["tokens"] == 3
    opened = fastlm.open_ids(tmp_path / "ids.bin")
    assert isinstance(opened, np.memmap) and opened.dtype == np.dtype(dtype) and not opened.flags.writeable
    np.testing.assert_array_equal(opened, ids)
    assert (tmp_path / "ids.bin").stat().st_size == HEADER_BYTES + 3 * np.dtype(dtype).itemsize


def test_header_layout_is_little_endian(tmp_path):
    fastlm.save_ids(tmp_path / "ids.bin", np.array([1, 258], np.int32), 300)
    raw = (tmp_path / "ids.bin").read_bytes()
    assert raw[:8] == b"FASTLMID"
    assert struct.unpack("<IIQQ", raw[8:32]) == (1, 2, 300, 2)
    assert raw[32:HEADER_BYTES] == bytes(32)
    assert raw[HEADER_BYTES:] == b"\x01\x00\x02\x01"


def test_save_ids_streams_chunks(tmp_path):
    chunks = [np.arange(k, k + 10) for k in range(0, 50, 10)]
    assert fastlm.save_ids(tmp_path / "ids.bin", iter(chunks), 100) == 50
    np.testing.assert_array_equal(fastlm.open_ids(tmp_path / "ids.bin"), np.arange(50))


def test_save_ids_takes_a_flat_list_as_one_sequence(tmp_path):
    """[1, 2, 3] is the ids themselves, not three chunks of shape ()."""
    assert fastlm.save_ids(tmp_path / "ids.bin", [1, 2, 3], 10) == 3
    np.testing.assert_array_equal(fastlm.open_ids(tmp_path / "ids.bin"), [1, 2, 3])
    assert fastlm.save_ids(tmp_path / "two.bin", [[1, 2], np.array([3])], 10) == 3  # still a list of chunks


@pytest.mark.parametrize("level, eos", [("word", None), ("char", None), ("word", "<eos>")])
def test_encode_files_equals_encode_of_joined_text(tmp_path, level, eos):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT * 50, encoding="utf-8")
    b.write_text("the mat sat", encoding="utf-8")
    tok = fastlm.Tokenizer.fit(TEXT, level=level, **({"eos": eos} if eos else {}))
    header = token_file.encode_files([a, b], tok, tmp_path / "ids.bin")
    expected = tok.encode(TEXT * 50 + "\n" + "the mat sat")
    assert header["tokens"] == len(expected) and header["vocab_size"] == len(tok)
    np.testing.assert_array_equal(fastlm.open_ids(tmp_path / "ids.bin"), expected)


@pytest.mark.parametrize("eos, tail", [(None, ""), ("<eos>", ""), ("<eos>", "the end")])
def test_encode_file_chunks_concatenate_to_encode_file(tmp_path, eos, tail):
    path = tmp_path / "a.txt"
    path.write_text(TEXT * 200 + tail, encoding="utf-8")
    tok = fastlm.Tokenizer.fit(TEXT, **({"eos": eos} if eos else {}))
    chunks = list(tok.encode_file_chunks(path, chunk_size=100))
    assert len(chunks) > 10 and all(c.dtype == np.int32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), tok.encode_file(path))


# ---------------------------------------------------------------- no copies, bounded memory


def test_gather_reads_a_memmap_without_copying_it(tmp_path):
    n = 4_000_000  # 8 MB of uint16 ids
    fastlm.save_ids(tmp_path / "ids.bin", np.arange(n, dtype=np.int64) % 50000, 50000)
    ids = fastlm.open_ids(tmp_path / "ids.bin")
    starts = np.array([0, 12345, n - 36], dtype=np.int64)
    tracemalloc.start()
    try:
        x, y = _core.gather_windows(ids, starts, 35)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # the batch, not an int32 copy of the 8 MB corpus
    np.testing.assert_array_equal(x, fastlm.reference.gather_windows(np.asarray(ids), starts, 35)[0])
    np.testing.assert_array_equal(y[:, -1], (starts + 35) % 50000)


def test_check_corpus_keeps_narrow_arrays_and_converts_others():
    narrow = np.arange(10, dtype=np.uint16)
    assert token_file.check_corpus("ids", narrow, 10) is narrow
    wide = np.arange(10, dtype=np.int64)
    checked = token_file.check_corpus("ids", wide, 10)
    assert checked.dtype == np.int32 and checked.flags.c_contiguous
    np.testing.assert_array_equal(checked, wide)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident set from /proc (Linux)")
def test_release_pages_returns_a_memmaps_resident_pages(tmp_path):
    n = 32 << 20  # 64 MB of uint16 ids
    fastlm.save_ids(tmp_path / "ids.bin", (np.zeros(1 << 22, np.uint16) for _ in range(n >> 22)), 10)
    ids = fastlm.open_ids(tmp_path / "ids.bin")
    before = resident_bytes()
    assert int(ids[::1024].sum()) == 0  # touches every page
    touched = resident_bytes()
    token_file.release_pages(ids)
    released = resident_bytes()
    assert touched - before > 48 << 20
    assert touched - released > 48 << 20
    token_file.release_pages(np.zeros(10))  # an array in memory: nothing to do


# ---------------------------------------------------------------- bad input


def test_bad_id_is_named_with_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(token_file, "_CHECK_CHUNK", 1000)  # the bad id lies in a later chunk
    ids = np.zeros(5000, np.int32)
    ids[3456], ids[4000] = 70, 99
    fastlm.save_ids(tmp_path / "ids.bin", ids, 100)
    with pytest.raises(ValueError, match=r"holds id 70 at offset 3,456, outside the vocabulary \[0, 50\).*100"):
        fastlm.open_ids(tmp_path / "ids.bin", vocab_size=50)
    assert len(fastlm.open_ids(tmp_path / "ids.bin", vocab_size=100)) == 5000
    with pytest.raises(ValueError, match="holds id -1 at offset 3"):
        token_file.check_corpus("ids", np.array([0, 1, 2, -1]), 10)


def test_save_ids_refuses_ids_outside_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="holds id 12 at offset 12"):
        fastlm.save_ids(tmp_path / "ids.bin", iter([np.arange(10), np.array([10, 11, 12])]), 12)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
    with pytest.raises(TypeError, match="1-D integer"):
        fastlm.save_ids(tmp_path / "ids.bin", np.zeros(3), 12)
    with pytest.raises(ValueError, match="vocab_size"):
        fastlm.save_ids(tmp_path / "ids.bin", np.zeros(3, np.int32), 0)


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "ids.bin"
    fastlm.save_ids(path, np.arange(100), 1000)
    return path


def test_truncated_file(good_file):
    good_file.write_bytes(good_file.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"is truncated: its header announces 100 ids of 2 bytes \(264 bytes"):
        fastlm.open_ids(good_file)
    good_file.write_bytes(good_file.read_bytes()[:20])
    with pytest.raises(ValueError, match="shorter than the 64-byte header"):
        fastlm.open_ids(good_file)


def test_trailing_bytes(good_file):
    good_file.write_bytes(good_file.read_bytes() + b"\0\0")
    with pytest.raises(ValueError, match="has trailing bytes"):
        fastlm.open_ids(good_file)


def test_wrong_header(good_file, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("just some text, not ids")
    with pytest.raises(ValueError, match="not a fastlm token file"):
        fastlm.open_ids(text)
    raw = bytearray(good_file.read_bytes())
    raw[8] = 7
    good_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="format version 7"):
        fastlm.open_ids(good_file)
    raw[8], raw[12] = 1, 3
    good_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt header: 3 bytes per id"):
        fastlm.open_ids(good_file)
    with pytest.raises(FileNotFoundError):
        fastlm.open_ids(tmp_path / "missing.bin")
    with pytest.raises(IsADirectoryError):
        fastlm.open_ids(tmp_path)


# ---------------------------------------------------------------- the command line


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 400, encoding="utf-8")
    return path


@pytest.mark.parametrize("fit", [[], ["--fit"]])
def test_encode_names_a_file_that_is_not_utf8(capsys, tmp_path, corpus_file, fit):
    """In the command line's words: the Python API's errors='replace' is no option of `fastlm encode`."""
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    tokenizer = tmp_path / "tok.json"
    if not fit:
        fastlm.Tokenizer.fit_file(corpus_file).save(tokenizer)
    code, out, err = run_cli(
        capsys, "encode", corpus_file, latin1, *fit, "--tokenizer", tokenizer, "--out", tmp_path / "ids.bin"
    )
    assert code == 1 and err.startswith("fastlm encode: error: "), err
    assert f"{latin1} is not UTF-8 text (invalid byte at offset 3); convert it to UTF-8 first" in err, err
    assert "errors=" not in err and not (tmp_path / "ids.bin").exists()


def test_encode_then_train_on_the_ids(capsys, tmp_path, corpus_file):
    code, out, err = run_cli(
        capsys,
        "encode",
        corpus_file,
        corpus_file,
        "--fit",
        "--tokenizer",
        tmp_path / "tok.json",
        "--out",
        tmp_path / "ids.bin",
    )
    assert code == 0, err
    tok = fastlm.Tokenizer.load(tmp_path / "tok.json")
    text = corpus_file.read_text(encoding="utf-8")
    np.testing.assert_array_equal(fastlm.open_ids(tmp_path / "ids.bin"), tok.encode(text + "\n" + text))
    assert f"{2 * len(tok.encode(text)):,} word tokens" in out and "uint16 ids" in out
    code, out, err = run_cli(
        capsys,
        "train",
        *ids_training_options(tmp_path),
        *cli_options(epochs=1, max_steps=3),
    )
    assert code == 0, err
    assert f"corpus: {tmp_path / 'ids.bin'}" in out and "stopped after 3 steps" in out
    assert fastlm.load(tmp_path / "model").tokenizer == tok
    # a model directory serves as --tokenizer too
    code, _, err = run_cli(
        capsys, "encode", corpus_file, "--tokenizer", tmp_path / "model", "--out", tmp_path / "again.bin"
    )
    assert code == 0, err
    np.testing.assert_array_equal(fastlm.open_ids(tmp_path / "again.bin"), tok.encode(text))


def test_train_ids_bad_input(capsys, tmp_path, corpus_file):
    small = fastlm.Tokenizer.fit("the cat")
    small.save(tmp_path / "small.json")
    big = fastlm.Tokenizer.fit(TEXT)
    ids = big.encode(TEXT * 10)
    fastlm.save_ids(tmp_path / "ids.bin", ids, len(big))
    first_bad = int(np.flatnonzero(ids >= len(small))[0])
    common = ["--epochs", "1", "--max-steps", "1", "--out", tmp_path / "model"]
    code, _, err = run_cli(
        capsys, "train", "--ids", tmp_path / "ids.bin", "--tokenizer", tmp_path / "small.json", *common
    )
    assert code == 1 and f"at offset {first_bad:,}, outside the vocabulary [0, {len(small)})" in err
    code, _, err = run_cli(capsys, "train", "--ids", tmp_path / "ids.bin", *common)
    assert code == 2 and "--ids needs --tokenizer" in err  # usage errors: exit 2
    code, _, err = run_cli(capsys, "train", corpus_file, "--ids", tmp_path / "ids.bin", *common)
    assert code == 2 and "either CORPUS text files (or --dataset) or --ids" in err
    code, _, err = run_cli(capsys, "train", corpus_file, "--tokenizer", tmp_path / "small.json", *common)
    assert code == 2 and f"--tokenizer {tmp_path / 'small.json'} goes with --ids" in err  # not silently ignored
    code, _, err = run_cli(
        capsys, "train", "--ids", tmp_path / "no.bin", "--tokenizer", tmp_path / "small.json", *common
    )
    assert code == 2 and f"argument --ids: {tmp_path / 'no.bin'} does not exist" in err
    code, _, err = run_cli(capsys, "train", "--ids", corpus_file, "--tokenizer", tmp_path / "small.json", *common)
    assert code == 1 and "not a fastlm token file" in err
    assert not (tmp_path / "model").exists()
    code, _, err = run_cli(
        capsys, "encode", corpus_file, "--tokenizer", tmp_path / "missing.json", "--out", tmp_path / "x.bin"
    )
    assert code == 2 and f"argument --tokenizer: {tmp_path / 'missing.json'} does not exist" in err
    assert not (tmp_path / "x.bin").exists()
    for out, message in [
        (tmp_path, "is a directory"),
        (tmp_path / "no" / "x.bin", f"the directory {tmp_path / 'no'} does"),
    ]:
        code, _, err = run_cli(capsys, "encode", corpus_file, "--tokenizer", tmp_path / "small.json", "--out", out)
        assert code == 2 and f"argument --out: {out}" in err and message in err, err
    code, _, err = run_cli(
        capsys, "encode", tmp_path, "--tokenizer", tmp_path / "small.json", "--out", tmp_path / "x.bin"
    )
    assert code == 2 and f"argument CORPUS: {tmp_path} is a directory, not a file" in err, err


def test_window_order_is_narrow_and_the_permutation_of_the_starts():
    from fastlm.batches import WindowBatches, epoch_rng

    ids = np.zeros(10_000, np.uint16)
    batches = WindowBatches(_core, ids, 35, 20, 7, True, 5)
    order = batches.window_order(3)
    assert order.dtype == np.int32  # 4 bytes per window: 120 MB for a 1G-token corpus, not 2 x 240 MB
    starts = np.arange(batches.count, dtype=np.int64) * 7
    np.testing.assert_array_equal(order.astype(np.int64) * 7, epoch_rng(5, 3).permutation(starts))
    x, _ = next(batches.epoch(3))
    assert x.shape == (20, 35)
