"""File operators: content reads (whole files and byte ranges) and media types sniffed from
content, checked against the ``file`` command on real photos, speech and video."""

from __future__ import annotations

import shutil
import subprocess

import pyarrow as pa
import pytest

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_photos, sample_speech, sample_videos
from rillet.types import FileType


@pytest.fixture(scope="module")
def media():
    return [str(p) for p in sample_photos() + sample_speech() + sample_videos()]


def _file_command(path: str) -> str:
    return subprocess.run([shutil.which("file"), "--brief", "--mime-type", path],
                          check=True, capture_output=True, text=True).stdout.strip()


# Where `file` and Rillet use different names for the same type.
_SAME = {"audio/x-wav": "audio/wav", "audio/x-flac": "audio/flac", "image/x-ms-bmp": "image/bmp",
         "audio/x-m4a": "audio/mp4", "application/ogg": "audio/ogg"}


def test_mime_type_agrees_with_the_file_command(media):
    out = rl.from_pydict({"p": media}).select("p", col("p").file.mime_type().alias("m")).to_pydict()
    for path, ours in zip(out["p"], out["m"]):
        theirs = _file_command(path)
        assert ours == _SAME.get(theirs, theirs), path


def _real_documents(directory) -> dict[str, str]:
    """Files made by the tools that make them for users (Pillow, pillow-heif, python-docx,
    openpyxl, python-pptx, ffmpeg), each with the type it must sniff as."""
    import docx
    import openpyxl
    import pillow_heif
    import pptx
    from PIL import Image

    made = {}
    photo = Image.open(sample_photos()[0]).convert("RGB")
    photo.save(directory / "photo.avif")
    made["photo.avif"] = "image/avif"
    pillow_heif.from_pillow(photo).save(str(directory / "photo.heic"), quality=60)
    made["photo.heic"] = "image/heic"
    document = docx.Document()
    document.add_paragraph("A letter. " * 200)
    document.save(directory / "letter.docx")
    made["letter.docx"] = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    book = openpyxl.Workbook()
    for row in range(200):
        book.active.append([row, f"item {row}", row * 1.5])
    book.save(directory / "sheet.xlsx")
    made["sheet.xlsx"] = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    deck = pptx.Presentation()
    deck.slides.add_slide(deck.slide_layouts[0]).shapes.title.text = "Results"
    deck.save(directory / "deck.pptx")
    made["deck.pptx"] = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    video = str(sample_videos()[0])
    for name, kind in [("clip.mov", "video/quicktime"), ("clip.3gp", "video/3gpp")]:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", video, "-t", "1", "-c", "copy",
                        str(directory / name)], check=True)
        made[name] = kind
    import zipfile
    with zipfile.ZipFile(directory / "plain.zip", "w") as z:
        z.writestr("notes.txt", "words")
    made["plain.zip"] = "application/zip"
    (directory / "drawing.svg").write_text('<?xml version="1.0"?>\n<!-- a box -->\n'
                                          '<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>')
    made["drawing.svg"] = "image/svg+xml"
    return made


def test_mime_type_knows_heif_avif_office_and_video_containers(tmp_path):
    made = _real_documents(tmp_path)
    files = rl.read_files(str(tmp_path / "*")).select(
        "path", col("file").file.mime_type().alias("m")).to_pydict()
    found = {path.rsplit("/", 1)[1]: m for path, m in zip(files["path"], files["m"])}
    assert found == made
    for name, kind in made.items():  # and the file command agrees
        theirs = _file_command(str(tmp_path / name))
        assert _SAME.get(theirs, theirs) == kind, (name, theirs)


def test_mime_type_reads_content_not_names(tmp_path):
    (tmp_path / "photo.txt").write_bytes(sample_photos()[0].read_bytes())
    (tmp_path / "notes.png").write_text("just words\n")
    (tmp_path / "data.bin").write_text('{"a": 1}')
    files = rl.read_files(str(tmp_path / "*")).sort("path")
    out = files.select(col("file").file.mime_type().alias("m")).to_pydict()["m"]
    assert out == ["application/json", "text/plain", "image/png"]


def test_read_whole_files_byte_ranges_and_missing_files(media, tmp_path):
    paths = media[:5]
    files = rl.read_files(paths[0].rsplit("/", 1)[0] + "/*.png").sort("path").limit(3)
    read = files.select("path", col("file").file.read().alias("b")).to_pydict()
    for path, content in zip(read["path"], read["b"]):
        assert content == open(path, "rb").read()
    # A File with a byte range reads just that range.
    storage = pa.array([{"uri": paths[0], "offset": 10, "length": 20, "version": None, "media_type": None}],
                       type=FileType().storage_type)
    ranged = rl.from_arrow(pa.table({"f": pa.ExtensionArray.from_storage(FileType(), storage)}))
    assert ranged.select(col("f").file.read().alias("b")).to_pydict()["b"] == [open(paths[0], "rb").read()[10:30]]
    missing = rl.from_pydict({"p": [str(tmp_path / "gone.jpg")]})
    out = missing.select(col("p").file.read(on_error="column").alias("b")).to_pydict()["b"][0]
    assert out["value"] is None and "no such file" in out["error"]
    assert rl.sql("SELECT file_mime_type(p) AS m FROM t", t=rl.from_pydict({"p": paths[:1]})).to_pydict()["m"] == [_SAME.get(_file_command(paths[0]), _file_command(paths[0]))]
