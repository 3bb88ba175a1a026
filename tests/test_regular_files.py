"""relpos.regular_files: every byte of a regular file comes back, and a file never comes back larger than its limit."""

import os

import pytest

from relpos.regular_files import FileRefused, iter_regular, os_reason, read_regular

CHUNK = 7


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 2])
@pytest.mark.parametrize("chunk_bytes", [CHUNK, None])
def test_every_byte_comes_back_whatever_the_size_against_the_chunk(tmp_path, size, chunk_bytes):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert b"".join(iter_regular(tmp_path / "f", limit=size, chunk_bytes=chunk_bytes)) == data
    assert read_regular(tmp_path / "f", limit=size) == data


def test_a_file_over_its_limit_is_refused_before_any_byte_is_read(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 11)
    with pytest.raises(FileRefused, match="11 bytes is too large a file .limit 10"):
        next(iter_regular(tmp_path / "f", limit=10))


@pytest.mark.parametrize("chunk_bytes,first", [(4, b"x" * 4), (None, b"x" * 10)])
def test_a_file_that_grows_past_its_limit_while_read_is_refused(tmp_path, chunk_bytes, first):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    chunks = iter_regular(path, limit=20, chunk_bytes=chunk_bytes)
    assert next(chunks) == first  # opened and checked at 10 bytes
    with open(path, "ab") as handle:
        handle.write(b"y" * 20)
    with pytest.raises(FileRefused, match="grew while read"):
        list(chunks)


def test_os_reason_gives_the_reason_without_the_path(tmp_path):
    with pytest.raises(OSError) as error:
        os.stat(tmp_path / "missing")
    assert os_reason(error.value) == "No such file or directory"
    assert os_reason(ValueError("plain")) == "plain"
