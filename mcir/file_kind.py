"""What a file is, told from its first bytes, so every loader can say what to do with it.

A file's suffix is a hint, its content is the fact: a model saved as ``model.bin``, an
ONNX file given to ``mcir compile`` or an image passed by mistake each get a one-line
answer naming the file and the kind found, never a pickle or UTF-8 error from deep inside
a loader (and never advice to ``--trust`` a file that is not a pickle at all).

    kind = file_kind("model.onnx")        # FileKind("onnx", "an ONNX model (protobuf)")
    require_model_file("x.png")           # ModelFileError: x.png: a PNG image, not a model ...

Only the first 4 KiB are read (plus the zip directory of zip files); nothing is unpickled
or imported.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mcir.errors import ModelFileError

HEAD_BYTES = 4096


@dataclass(frozen=True)
class FileKind:
    """``name`` is a stable key (``"torch-zip"``, ``"onnx"``...), ``what`` a phrase for messages."""

    name: str
    what: str


TORCH_ZIP = FileKind("torch-zip", "a torch.save file (zip)")
TORCH_EXPORT = FileKind("torch-export", "a torch.export archive (.pt2)")
TORCH_LEGACY = FileKind("torch-legacy", "a pickle (torch.save legacy format or plain pickle)")
MCIR_TEXT = FileKind("mcir-text", "an mcir IR text file")
ONNX = FileKind("onnx", "an ONNX model (protobuf)")

# magic numbers of files people pass by mistake: (prefix, kind)
_MAGIC = (
    (b"\x7fELF", FileKind("elf", "an ELF binary (a program, object or shared library)")),
    (b"\x89PNG\r\n\x1a\n", FileKind("png", "a PNG image")),
    (b"\xff\xd8\xff", FileKind("jpeg", "a JPEG image")),
    (b"GIF8", FileKind("gif", "a GIF image")),
    (b"%PDF", FileKind("pdf", "a PDF document")),
    (b"\x1f\x8b", FileKind("gzip", "a gzip-compressed file")),
    (b"BZh", FileKind("bzip2", "a bzip2-compressed file")),
    (b"\xfd7zXZ\x00", FileKind("xz", "an xz-compressed file")),
    (b"\x28\xb5\x2f\xfd", FileKind("zstd", "a zstd-compressed file")),
    (b"\x93NUMPY", FileKind("npy", "a numpy array (.npy)")),
    (b"MZ", FileKind("pe", "a Windows executable")),
    (b"\xcf\xfa\xed\xfe", FileKind("macho", "a Mach-O binary")),
)
_PROTOBUF_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x52, 0x72}  # length-delimited fields 2..14


def file_kind(path: str | Path) -> FileKind:
    """The kind of the file at ``path`` (which must exist), from its content."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return FileKind("empty", "an empty file")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(path)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode and protocol
        return TORCH_LEGACY
    if _looks_like_safetensors(head):
        return FileKind("safetensors", "a safetensors weights file")
    if _looks_like_onnx(head, path):
        return ONNX
    text = _as_text(head)
    if text is not None:
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")).lstrip()
        if code.startswith("graph @") or (code == "" and path.suffix == ".mcir"):
            return MCIR_TEXT
        return FileKind("text", "a text file")
    return FileKind("binary", "a binary file of unknown format")


def _zip_kind(path: Path) -> FileKind:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileKind("zip-broken", "a truncated or corrupt zip file")
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        return TORCH_EXPORT
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return TORCH_ZIP
    if names and all(n.endswith(".npy") for n in names):
        return FileKind("npz", "a numpy archive (.npz)")
    return FileKind("zip", "a zip archive that torch.save did not write")


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header
    if len(head) < 10:
        return False
    (size,) = struct.unpack_from("<Q", head)
    return 0 < size < 100_000_000 and head[8:10] in (b'{"', b"{ ", b"{\n")


def _looks_like_onnx(head: bytes, path: Path) -> bool:
    # ModelProto starts with field 1 (ir_version, varint: tag 0x08) followed by a string/message field
    if len(head) < 3 or head[0] != 0x08:
        return False
    if not 1 <= head[1] <= 0x7F:
        return False
    return head[2] in _PROTOBUF_FIELD_TAGS or path.suffix == ".onnx"


def _as_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 3:  # a multi-byte character cut by the 4 KiB window
            return head[: e.start].decode("utf-8")
        return None


def advice(kind: FileKind) -> str:
    """What to do instead of loading a file of this kind as a model."""
    if kind == ONNX:
        return "import it with mcir.from_onnx(path); the command line takes ONNX files as models directly"
    if kind.name == "elf":
        return "a compiled library is run with 'mcir run LIB.so' or mcir.runtime.Library, not loaded as a model"
    if kind.name == "safetensors":
        return "weights alone: save them with torch.save(model.state_dict()) and give --model-def, or pass the folder"
    if kind.name in ("npy", "npz"):
        return "arrays are inputs (mcir run --input) or calibration data (--calibration), not models"
    return "give a torch.save / torch.export.save file, a saved mcir folder or an .mcir text file"


def require_model_file(path: str | Path) -> FileKind:
    """The kind of a model file mcir can load (torch zip, .pt2, pickle or mcir text), else a ModelFileError
    naming the file and what it is."""
    path = Path(path)
    kind = file_kind(path)
    if kind in (TORCH_ZIP, TORCH_EXPORT, TORCH_LEGACY, MCIR_TEXT):
        return kind
    if kind.name == "zip-broken":
        raise ModelFileError(f"{path}: cannot read the model file: its zip directory is missing; is it truncated?")
    raise ModelFileError(f"{path}: {kind.what}, not a model file mcir can load; {advice(kind)}")
