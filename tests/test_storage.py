"""electra_ray/storage.py: listing folders the way the other tools leave them."""

from __future__ import annotations

import pytest

from electra_ray import storage


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"{request.getfixturevalue('bucket')}/run"


def test_list_files_lists_the_files_of_a_folder_and_nothing_else(folder):
    assert storage.list_files(f"{folder}/ckpt") == [], "a missing folder lists nothing"
    # pyarrow makes folders the way Ray Train's checkpoint uploads do: on S3 an empty "ckpt/"
    # object for each, which s3fs lists as a file inside the folder itself
    fs = storage.pyarrow_filesystem(folder)
    fs.create_dir(storage.to_pyarrow_path(f"{folder}/ckpt/sub"))
    storage.write_bytes(f"{folder}/ckpt/model.pt", b"weights")
    storage.write_json(f"{folder}/ckpt/meta.json", {"step": 3})
    storage.write_bytes(f"{folder}/ckpt/sub/deeper.bin", b"x")
    storage.write_bytes(f"{folder}/top.txt", b"y")

    assert storage.list_files(f"{folder}/ckpt") == [f"{folder}/ckpt/meta.json", f"{folder}/ckpt/model.pt"]
    assert storage.list_files(f"{folder}/ckpt/", ".pt") == [f"{folder}/ckpt/model.pt"]
    assert storage.list_files(folder) == [f"{folder}/top.txt"]
    assert storage.list_files(f"{folder}/ckpt/sub") == [f"{folder}/ckpt/sub/deeper.bin"]
