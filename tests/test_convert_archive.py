"""The archive extractor refuses zip-slip (`..`), absolute paths and links, and writes nothing then."""
import io
import os
import stat
import tarfile
import zipfile

import pytest

from danie_nnunet.convert.archive import UnsafeArchiveError, extract_archive, open_sources, safe_member_path


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "data/../../evil.txt", "/etc/evil.txt", "C:/evil.txt",
                                  "..\\evil.txt", "data\\..\\..\\evil.txt"])
def test_zip_slip_and_absolute_paths_are_refused(tmp_path, name):
    archive = make_zip(str(tmp_path / "a.zip"), [("data/ok.txt", "fine"), (name, "pwned")])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, str(dest))
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (dest / "data" / "ok.txt").exists()  # checked before anything is written


def test_symlink_members_are_refused(tmp_path):
    archive = str(tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_archive(archive, str(tmp_path / "dest"))
    tar_path = str(tmp_path / "link.tar.gz")
    with tarfile.open(tar_path, "w:gz") as t:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        extract_archive(tar_path, str(tmp_path / "dest2"))


def test_tar_with_dotdot_is_refused_and_good_archives_extract(tmp_path):
    tar_path = str(tmp_path / "bad.tar")
    with tarfile.open(tar_path, "w") as t:
        data = b"pwned"
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError, match=r"climbs out"):
        extract_archive(tar_path, str(tmp_path / "dest"))
    assert not (tmp_path / "evil.txt").exists()
    good = make_zip(str(tmp_path / "good.zip"), [("RawData/Training/img/a.txt", "1"), ("./RawData/b.txt", "2")])
    (tmp_path / "folder").mkdir()
    os.rename(good, tmp_path / "folder" / "good.zip")
    roots = open_sources([str(tmp_path / "folder")], str(tmp_path / "work"))
    assert roots[0] == str(tmp_path / "folder")
    assert open(os.path.join(roots[1], "RawData", "Training", "img", "a.txt")).read() == "1"
    assert open(os.path.join(roots[1], "RawData", "b.txt")).read() == "2"
    assert safe_member_path("./a//b/./c") == "a/b/c"
