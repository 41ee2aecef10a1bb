"""Expressions: column references, literals and everything built from them.

>>> import rillet as rl
>>> e = (rl.col("price") * 2 + 1).alias("p2")
>>> e.name()
'p2'
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from rillet import _rillet
from rillet._session import current_session

_DTYPE_NAMES = {
    "bool": pa.bool_(), "boolean": pa.bool_(),
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float32": pa.float32(), "float64": pa.float64(), "float": pa.float64(), "int": pa.int64(),
    "string": pa.string(), "str": pa.string(), "utf8": pa.string(), "large_string": pa.large_string(),
    "binary": pa.binary(), "date": pa.date32(), "date32": pa.date32(),
    "timestamp": pa.timestamp("us"), "float16": pa.float16(),
    # Rillet's own element-type names (rl.int64 is "i64", as in tensor and image types).
    "i8": pa.int8(), "i16": pa.int16(), "i32": pa.int32(), "i64": pa.int64(),
    "u8": pa.uint8(), "u16": pa.uint16(), "u32": pa.uint32(), "u64": pa.uint64(),
    "f16": pa.float16(), "f32": pa.float32(), "f64": pa.float64(),
}


def to_arrow_type(dtype: Any) -> pa.DataType:
    """A pyarrow DataType from a pyarrow type, a name such as ``"int64"`` or a Python type."""
    if isinstance(dtype, pa.DataType):
        return dtype
    if dtype in (int, float, str, bool, bytes):
        dtype = {int: "int64", float: "float64", str: "string", bool: "bool", bytes: "binary"}[dtype]
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    raise TypeError(f"unknown data type {dtype!r}; use a pyarrow type or one of {sorted(_DTYPE_NAMES)}")


def _to_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    return Expr(_rillet.lit(value))


class Expr:
    """A lazy expression over the columns of a DataFrame. Build with :func:`col` and
    :func:`lit`, combine with Python operators (``+ - * / % == != < <= > >= & | ~``)."""

    __slots__ = ("_expr",)

    def __init__(self, inner: _rillet.Expr):
        self._expr = inner

    # arithmetic and comparison -------------------------------------------------------
    def _bin(self, op: str, other: Any) -> Expr:
        return Expr(self._expr.binary(op, _to_expr(other)._expr))

    def _rbin(self, op: str, other: Any) -> Expr:
        return Expr(_to_expr(other)._expr.binary(op, self._expr))

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._rbin("+", o)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._rbin("-", o)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._rbin("*", o)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._rbin("/", o)
    def __mod__(self, o): return self._bin("%", o)
    def __eq__(self, o): return self._bin("==", o)  # type: ignore[override]
    def __ne__(self, o): return self._bin("!=", o)  # type: ignore[override]
    def __lt__(self, o): return self._bin("<", o)
    def __le__(self, o): return self._bin("<=", o)
    def __gt__(self, o): return self._bin(">", o)
    def __ge__(self, o): return self._bin(">=", o)
    def __and__(self, o): return self._bin("and", o)
    def __rand__(self, o): return self._rbin("and", o)
    def __or__(self, o): return self._bin("or", o)
    def __ror__(self, o): return self._rbin("or", o)
    def __invert__(self): return Expr(self._expr.not_())
    def __neg__(self): return Expr(self._expr.negate())

    def __bool__(self):
        raise TypeError("an Expr has no truth value; combine conditions with & and |, not 'and'/'or'")

    __hash__ = None  # type: ignore[assignment]

    # naming and types ----------------------------------------------------------------
    def alias(self, name: str) -> Expr:
        """Name the result column."""
        return Expr(self._expr.alias(name))

    def cast(self, dtype: Any) -> Expr:
        """Convert to ``dtype`` (a pyarrow type, a name such as ``"float64"``, or one of
        Rillet's type names such as ``rl.int64``), keeping the column's name.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2]}).select(rl.col("a").cast(rl.float32)).to_pydict()
        {'a': [1.0, 2.0]}
        """
        return Expr(self._expr.cast(to_arrow_type(dtype)).alias(self._expr.name()))

    def name(self) -> str:
        """The name of the column this expression produces."""
        return self._expr.name()

    def is_null(self) -> Expr:
        """True where the value is null."""
        return Expr(self._expr.is_null())

    def is_not_null(self) -> Expr:
        """True where the value is not null."""
        return Expr(self._expr.is_not_null())

    def is_in(self, values: Iterable[Any]) -> Expr:
        """True where the value is one of ``values``.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2, 3]}).filter(rl.col("a").is_in([1, 3])).to_pydict()
        {'a': [1, 3]}
        """
        return Expr(self._expr.is_in([_to_expr(v)._expr for v in values]))

    def is_nan(self) -> Expr:
        """True where a float is NaN (null stays null).

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1.0, float("nan")]}).select(rl.col("a").is_nan()).to_pydict()["a"]
        [False, True]
        """
        return _call("isnan", self).alias(self.name())

    def fill_null(self, value: Any) -> Expr:
        """Nulls replaced by ``value``.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, None]}).select(rl.col("a").fill_null(0)).to_pydict()
        {'a': [1, 0]}
        """
        return _call("coalesce", self, value).alias(self.name())

    def between(self, low: Any, high: Any, closed: str = "both") -> Expr:
        """True where ``low <= value <= high`` (``closed``: ``"both"``, ``"left"``,
        ``"right"`` or ``"none"`` says which ends count).

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2, 3]}).filter(rl.col("a").between(2, 3)).to_pydict()
        {'a': [2, 3]}
        """
        ends = {"both": (">=", "<="), "left": (">=", "<"), "right": (">", "<="), "none": (">", "<")}
        if closed not in ends:
            raise ValueError(f"closed must be one of {sorted(ends)}, not {closed!r}")
        lower, upper = ends[closed]
        return self._bin(lower, low) & self._bin(upper, high)

    def clip(self, lower: Any = None, upper: Any = None) -> Expr:
        """Values limited to ``[lower, upper]`` (either may be None).

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [-5, 3, 99]}).select(rl.col("a").clip(0, 10)).to_pydict()
        {'a': [0, 3, 10]}
        """
        out = self
        if lower is not None:
            out = when(out < lower, lower).otherwise(out)
        if upper is not None:
            out = when(out > upper, upper).otherwise(out)
        return out.alias(self.name())

    def abs(self) -> Expr:
        """The absolute value."""
        return _call("abs", self).alias(self.name())

    def round(self, decimals: int = 0) -> Expr:
        """Rounded to ``decimals`` places (half away from zero)."""
        return _call("round", self, decimals).alias(self.name())

    def floor(self) -> Expr:
        """The largest whole number not above the value."""
        return _call("floor", self).alias(self.name())

    def ceil(self) -> Expr:
        """The smallest whole number not below the value."""
        return _call("ceil", self).alias(self.name())

    def sqrt(self) -> Expr:
        """The square root."""
        return _call("sqrt", self).alias(self.name())

    def exp(self) -> Expr:
        """e to the power of the value."""
        return _call("exp", self).alias(self.name())

    def log(self, base: float | None = None) -> Expr:
        """The natural logarithm, or the logarithm to ``base``.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [100.0]}).select(rl.col("a").log(10)).to_pydict()["a"]
        [2.0]
        """
        out = _call("ln", self) if base is None else _call("log", float(base), self)
        return out.alias(self.name())

    # aggregations ----------------------------------------------------------------------
    def sum(self) -> Expr:
        """The sum (per group)."""
        return _call("sum", self)

    def mean(self) -> Expr:
        """The mean (per group)."""
        return _call("avg", self)

    def min(self) -> Expr:
        """The smallest value (per group)."""
        return _call("min", self)

    def max(self) -> Expr:
        """The largest value (per group)."""
        return _call("max", self)

    def count(self) -> Expr:
        """The number of non-null values (per group)."""
        return _call("count", self)

    def stddev(self) -> Expr:
        """The sample standard deviation (per group)."""
        return _call("stddev", self)

    def list(self) -> Expr:
        """The values gathered into a list (per group)."""
        return _call("array_agg", self)

    @property
    def dt(self) -> DateTimeNamespace:
        """Date and time parts: ``col("t").dt.year()``, ``.dt.truncate("day")``."""
        return DateTimeNamespace(self)

    @property
    def str(self) -> StringNamespace:
        """String operations: ``col("name").str.lower()``."""
        return StringNamespace(self)

    @property
    def text(self) -> TextNamespace:
        """Text cleaning operators: ``col("body").text.normalize()``, ``.text.chunk(500)``."""
        return TextNamespace(self)

    @property
    def vector(self) -> VectorNamespace:
        """Vector operators: ``col("emb").vector.cosine_similarity(col("query"))``."""
        return VectorNamespace(self)

    @property
    def audio(self) -> AudioNamespace:
        """Audio operators: ``col("file").audio.decode()``, ``col("a").audio.resample(16000)``."""
        return AudioNamespace(self)

    @property
    def file(self) -> FileNamespace:
        """File operators: ``col("file").file.read()``, ``col("path").file.mime_type()``."""
        return FileNamespace(self)

    @property
    def pdf(self) -> PdfNamespace:
        """PDF operators: ``col("file").pdf.pages()``, ``col("b").pdf.text()``."""
        return PdfNamespace(self)

    @property
    def url(self) -> UrlNamespace:
        """URL operators: ``col("url").url.download()``."""
        return UrlNamespace(self)

    @property
    def video(self) -> VideoNamespace:
        """Video operators (FFmpeg): ``col("path").video.frames(interval_ms=500)``."""
        return VideoNamespace(self)

    def __getitem__(self, name: str) -> Expr:
        """A field of a struct column: ``col("frame")["image"]``."""
        return _call("get_field", self, name)

    @property
    def image(self) -> ImageNamespace:
        """Image operations: ``col("file").image.decode()``, ``col("img").image.resize(224, 224)``."""
        return ImageNamespace(self)

    def __repr__(self) -> str:
        return repr(self._expr)


def _call(name: str, *args: Any) -> Expr:
    return Expr(_rillet.call_function(current_session()._native, name, [_to_expr(a)._expr for a in args]))


class StringNamespace:
    """String functions, vectorized (DataFusion kernels underneath)."""

    def __init__(self, expr: Expr):
        self._e = expr

    def contains(self, pattern: str) -> Expr:
        """True where the string contains ``pattern`` (a plain substring)."""
        return _call("contains", self._e, pattern)

    def starts_with(self, prefix: str) -> Expr:
        """True where the string starts with ``prefix``."""
        return _call("starts_with", self._e, prefix)

    def ends_with(self, suffix: str) -> Expr:
        """True where the string ends with ``suffix``."""
        return _call("ends_with", self._e, suffix)

    def lower(self) -> Expr:
        """Lower case."""
        return _call("lower", self._e)

    def upper(self) -> Expr:
        """Upper case."""
        return _call("upper", self._e)

    def matches(self, pattern: str) -> Expr:
        """True where the regular expression ``pattern`` matches somewhere in the string.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"s": ["img_001.jpg", "notes.txt"]})
        >>> df.filter(rl.col("s").str.matches(r"_\\d+\\.jpg$")).to_pydict()
        {'s': ['img_001.jpg']}
        """
        return _call("regexp_like", self._e, pattern)

    def extract(self, pattern: str, group: int = 1) -> Expr:
        """The text of capture group ``group`` of the first match of ``pattern`` (null
        without a match).

        >>> import rillet as rl
        >>> df = rl.from_pydict({"s": ["img_001.jpg", "x"]})
        >>> df.select(rl.col("s").str.extract(r"_(\\d+)\\.")).to_pydict()
        {'s': ['001', None]}
        """
        if group < 0:
            raise ValueError(f"group must be >= 0, not {group}")
        match = _call("regexp_match", self._e, pattern if group else f"({pattern})")
        return _call("array_element", match, max(group, 1)).alias(self._e.name())

    def replace_regex(self, pattern: str, replacement: str) -> Expr:
        """Every match of the regular expression ``pattern`` replaced (``\\1`` names a
        group)."""
        return _call("regexp_replace", self._e, pattern, replacement, "g")

    def len(self) -> Expr:
        """Length in characters."""
        return _call("character_length", self._e)

    def replace(self, old: str, new: str) -> Expr:
        """Replace every occurrence of ``old`` by ``new``."""
        return _call("replace", self._e, old, new)

    def split(self, sep: str) -> Expr:
        """A list of the parts between ``sep``."""
        return _call("string_to_array", self._e, sep)

    def strip(self) -> Expr:
        """Without leading and trailing whitespace."""
        return _call("btrim", self._e)

    def substr(self, start: int, length: int | None = None) -> Expr:
        """Characters from ``start`` (0-based), ``length`` of them or to the end."""
        if length is None:
            return _call("substr", self._e, start + 1)
        return _call("substr", self._e, start + 1, length)


class DateTimeNamespace:
    """Parts of dates and timestamps (DataFusion kernels underneath).

    >>> import datetime, rillet as rl
    >>> df = rl.from_pydict({"t": [datetime.datetime(2024, 3, 5, 14, 30)]})
    >>> df.select(rl.col("t").dt.year().alias("y"), rl.col("t").dt.hour().alias("h")).to_pydict()
    {'y': [2024], 'h': [14]}
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def _part(self, part: str) -> Expr:
        return _call("date_part", part, self._e).cast(pa.int64()).alias(self._e.name())

    def year(self) -> Expr:
        """The year."""
        return self._part("year")

    def month(self) -> Expr:
        """The month, 1 to 12."""
        return self._part("month")

    def day(self) -> Expr:
        """The day of the month, 1 to 31."""
        return self._part("day")

    def hour(self) -> Expr:
        """The hour, 0 to 23."""
        return self._part("hour")

    def minute(self) -> Expr:
        """The minute, 0 to 59."""
        return self._part("minute")

    def second(self) -> Expr:
        """The second, 0 to 59."""
        return self._part("second")

    def weekday(self) -> Expr:
        """The day of the week, Monday 1 to Sunday 7 (ISO, as Polars)."""
        return self._part("isodow")

    def truncate(self, unit: str) -> Expr:
        """Rounded down to ``unit``: ``"year"``, ``"month"``, ``"week"``, ``"day"``,
        ``"hour"``, ``"minute"`` or ``"second"``."""
        return _call("date_trunc", unit, self._e).alias(self._e.name())

    def strftime(self, format: str) -> Expr:  # noqa: A002 - the usual name
        """Formatted as text with chrono's ``%Y-%m-%d``-style ``format``."""
        return _call("to_char", self._e, format).alias(self._e.name())


def col(name: str) -> Expr:
    """A column by name."""
    return Expr(_rillet.col(name))


def coalesce(*exprs: Any) -> Expr:
    """The first non-null value of ``exprs``, row by row.

    >>> import rillet as rl
    >>> df = rl.from_pydict({"a": [None, 2], "b": [1, 9]})
    >>> df.select(rl.coalesce(rl.col("a"), rl.col("b")).alias("c")).to_pydict()
    {'c': [1, 2]}
    """
    if not exprs:
        raise ValueError("coalesce needs at least one expression")
    return _call("coalesce", *exprs)


def concat_str(*exprs: Any, separator: str = "") -> Expr:
    """The strings of ``exprs`` joined with ``separator`` (null if any is null, as Polars).

    >>> import rillet as rl
    >>> df = rl.from_pydict({"a": ["x", "y"], "b": ["1", None]})
    >>> df.select(rl.concat_str(rl.col("a"), rl.col("b"), separator="-").alias("s")).to_pydict()
    {'s': ['x-1', None]}
    """
    parts = [_to_expr(e) for e in exprs]
    if not parts:
        raise ValueError("concat_str needs at least one expression")
    joined = _call("concat_ws", separator, *parts)
    any_null = parts[0].is_null()
    for p in parts[1:]:
        any_null = any_null | p.is_null()
    return when(any_null, lit(None).cast(pa.string())).otherwise(joined)


def lit(value: Any) -> Expr:
    """A literal value (None, bool, int, float, str, bytes)."""
    return Expr(_rillet.lit(value))


def count() -> Expr:
    """``count(*)``: the number of rows (per group)."""
    return Expr(_rillet.count_all())


class When:
    """``when(cond, value).when(cond2, value2).otherwise(default)``."""

    def __init__(self, branches: list[tuple[Expr, Expr]]):
        self._branches = branches

    def when(self, condition: Expr, value: Any) -> When:
        return When(self._branches + [(condition, _to_expr(value))])

    def otherwise(self, value: Any) -> Expr:
        return Expr(_rillet.case_when([(c._expr, v._expr) for c, v in self._branches], _to_expr(value)._expr))

    def end(self) -> Expr:
        """Finish without a default (null where no branch matches)."""
        return Expr(_rillet.case_when([(c._expr, v._expr) for c, v in self._branches], None))


def when(condition: Expr, value: Any) -> When:
    """Start a conditional expression."""
    return When([(condition, _to_expr(value))])


class ImageNamespace:
    """Image operators, native and vectorized; each is also a SQL function (``image_<name>``).

    Inputs may be decoded images or encoded content (bytes, a ``File``, a path string): the
    latter are decoded on the fly. Rows whose data cannot be processed (corrupt, truncated,
    unknown format, over ``max_pixels``) follow ``on_error``: ``"null"`` (the default) gives
    null, ``"raise"`` fails the job naming the row, ``"column"`` gives a struct
    ``{value, error}`` holding the reason.

    >>> import io, numpy as np, rillet as rl
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(buf, "PNG")
    >>> df = rl.from_pydict({"png": [buf.getvalue(), b"not an image"]})
    >>> out = df.select(rl.col("png").image.decode().image.resize(30, 20).image.width().alias("w"))
    >>> out.to_pydict()
    {'w': [30, None]}
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def _op(self, name: str, *options: Any) -> Expr:
        return _call(f"image_{name}", self._e, *options)

    def decode(self, mode: str | None = None, *, max_pixels: int = 134_217_728, on_error: str = "null") -> Expr:
        """Encoded bytes / File / path -> Image, applying EXIF orientation; ``mode`` converts
        (``"RGB"``, ``"L"``, ...)."""
        return self._op("decode", mode or "", max_pixels, on_error)

    def encode(self, format: str = "png", quality: int = 90, *, on_error: str = "null") -> Expr:  # noqa: A002
        """Image -> encoded bytes (png, jpeg, webp, bmp, tiff, gif)."""
        return self._op("encode", format, quality, on_error)

    def convert_format(self, format: str, quality: int = 90, *, on_error: str = "null") -> Expr:  # noqa: A002
        """Re-encode encoded images, e.g. PNG bytes -> JPEG bytes at ``quality``."""
        return self._op("convert_format", format, quality, on_error)

    def compress(self, quality: int = 80, *, on_error: str = "null") -> Expr:
        """Re-encode as JPEG at ``quality``."""
        return self._op("convert_format", "jpeg", quality, on_error)

    def resize(self, width: int, height: int, method: str = "bilinear", *, keep_aspect: bool = False,
               on_error: str = "null") -> Expr:
        """Resample to ``width x height`` (nearest, box, bilinear, hamming, bicubic, mitchell,
        lanczos3); with ``keep_aspect`` the image fits inside that box."""
        return self._op("resize", width, height, method, keep_aspect, on_error)

    def letterbox(self, width: int, height: int, fill: int = 114, method: str = "bilinear", *,
                  on_error: str = "null") -> Expr:
        """Fit inside ``width x height`` keeping the aspect ratio, centred on a ``fill`` canvas."""
        return self._op("letterbox", width, height, fill, method, on_error)

    def crop(self, x: int, y: int, width: int, height: int, *, on_error: str = "null") -> Expr:
        """The ``width x height`` window whose top-left corner is ``(x, y)``.

        Of an encoded JPEG only the window's region is decoded when it is under half the
        image (libjpeg-turbo's partial decode, the window mapped through the EXIF
        orientation; plans show ``image_decode[region]``): the pixels a full decode and
        crop give, and the same null for a damaged file."""
        return self._op("crop", x, y, width, height, on_error)

    def center_crop(self, width: int, height: int, *, on_error: str = "null") -> Expr:
        """The centred ``width x height`` window (of a JPEG only that region is decoded, as
        for :meth:`crop`)."""
        return self._op("center_crop", width, height, on_error)

    def flip(self, horizontal: bool = True, vertical: bool = False, *, on_error: str = "null") -> Expr:
        """Mirror left-right and/or top-bottom."""
        return self._op("flip", horizontal, vertical, on_error)

    def rotate(self, degrees: int, *, on_error: str = "null") -> Expr:
        """Rotate clockwise by 90, 180 or 270 degrees."""
        return self._op("rotate", degrees, on_error)

    def convert_mode(self, mode: str, *, on_error: str = "null") -> Expr:
        """Convert to RGB, RGBA, L, LA, L16, RGB16, RGBA16, RGB32F, RGBA32F."""
        return self._op("convert_mode", mode, on_error)

    def blur(self, sigma: float, *, on_error: str = "null") -> Expr:
        """Gaussian blur."""
        return self._op("blur", float(sigma), on_error)

    def adjust(self, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, *,
               on_error: str = "null") -> Expr:
        """Brightness, contrast and saturation factors as in Pillow's ``ImageEnhance``."""
        return self._op("adjust", float(brightness), float(contrast), float(saturation), on_error)

    def crop_black_border(self, threshold: int = 10, *, on_error: str = "null") -> Expr:
        """Trim the dark frame (pixels at or below ``threshold``) around the image."""
        return self._op("crop_black_border", threshold, on_error)

    def draw_boxes(self, boxes: Expr | str, *, color: str = "red", thickness: int = 2,
                   on_error: str = "null") -> Expr:
        """The image with each of its row's boxes outlined (a copy; the input is unchanged).

        ``boxes`` (a column or its name) holds, per row, a list of ``[x1, y1, x2, y2]``
        corners in the image's pixels, or the structs with a ``box`` field that
        ``rl.ai.detect_objects`` and ``rl.ai.ocr`` give. ``color`` is a name (``"red"``,
        ``"green"``, ``"blue"``, ``"yellow"``, ...) or ``"#rrggbb"``; lines are
        ``thickness`` pixels wide, drawn inside each box. Parts of a box outside the image
        are not drawn; a box that is not four finite numbers with ``x1 <= x2`` and
        ``y1 <= y2`` is bad data for its row (``on_error``).

        >>> import numpy as np, PIL.Image, rillet as rl
        >>> img = PIL.Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8))
        >>> df = rl.from_pydict({"img": [img], "boxes": [[[1.0, 1.0, 5.0, 5.0]]]})
        >>> out = df.select(rl.col("img").image.draw_boxes("boxes", thickness=1).alias("drawn")).to_pylist()
        >>> pixels = np.asarray(out[0]["drawn"])
        >>> pixels[1, 1].tolist(), pixels[2, 2].tolist(), pixels[4, 4].tolist()
        ([255, 0, 0], [0, 0, 0], [255, 0, 0])
        """
        if isinstance(boxes, str):
            boxes = col(boxes)
        return _call("image_draw_boxes", self._e, boxes, color, thickness, on_error)

    def to_tensor(self, dtype: str = "f32", layout: str = "CHW", mean: Iterable[float] | None = None,
                  std: Iterable[float] | None = None, *, on_error: str = "null") -> Expr:
        """Pixels as a Tensor (``CHW`` or ``HWC``), scaled to [0, 1] and normalised by
        ``mean``/``std`` for float dtypes; ``dtype="u8"`` keeps raw values."""
        return self._op("to_tensor", dtype, layout, [float(v) for v in mean or []],
                        [float(v) for v in std or []], on_error)

    def metadata(self, *, on_error: str = "null") -> Expr:
        """struct{width, height, channels, mode, format} (from the header for encoded input)."""
        return self._op("metadata", on_error)

    def width(self, *, on_error: str = "null") -> Expr:
        """The width in pixels."""
        return self._op("width", on_error)

    def height(self, *, on_error: str = "null") -> Expr:
        """The height in pixels."""
        return self._op("height", on_error)

    def aspect_ratio(self, *, on_error: str = "null") -> Expr:
        """width / height."""
        return self._op("aspect_ratio", on_error)

    def is_valid(self, max_pixels: int = 134_217_728, mode: str | None = None) -> Expr:
        """True when the row decodes completely (within ``max_pixels``, in ``mode`` if given)."""
        return self._op("is_valid", max_pixels, mode or "")

    def phash(self, *, on_error: str = "null") -> Expr:
        """64-bit DCT perceptual hash."""
        return self._op("phash", on_error)

    def dhash(self, *, on_error: str = "null") -> Expr:
        """64-bit difference hash."""
        return self._op("dhash", on_error)

    def hamming(self, other: Any) -> Expr:
        """Differing bits between this hash and ``other``."""
        return _call("image_hamming", self._e, other)

    def sharpness(self, *, on_error: str = "null") -> Expr:
        """Variance of the Laplacian (higher is sharper)."""
        return self._op("sharpness", on_error)

    def quality_score(self, *, on_error: str = "null") -> Expr:
        """A simple composite of sharpness, exposure and size, in [0, 1]."""
        return self._op("quality_score", on_error)


class AudioNamespace:
    """Audio operators, native and vectorized; each is also a SQL function (``audio_<name>``).

    Inputs may be decoded ``Audio`` or encoded content (bytes, a ``File``, a path string) in
    WAV, FLAC, MP3, Ogg Vorbis or MP4/AAC: the latter are decoded on the fly (metadata,
    duration, validity and clip references read only the header). A ``Clip`` column
    (``{uri, start_ms, end_ms}``, from ``split_by_duration(output="ref")`` or
    ``video.split``) is its file's audio between the two times: decoding starts a few
    packets before the clip where the codec allows (WAV, FLAC, ALAC, MP3) and stops at its
    end, and a clip that runs past the end of the audio is cut there. Rows whose data cannot
    be processed (corrupt, truncated, over ``max_decoded_bytes``, a clip that is empty or
    starts past the end) follow ``on_error`` as in :class:`ImageNamespace`.

    >>> import numpy as np, rillet as rl
    >>> tone = (0.5 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    >>> df = rl.from_pydict({"a": [(tone, 8000)]})
    >>> out = df.select(rl.col("a").audio.resample(16000).audio.duration().alias("seconds"))
    >>> out.to_pydict()
    {'seconds': [1.0]}
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def _op(self, name: str, *options: Any) -> Expr:
        return _call(f"audio_{name}", self._e, *options)

    def decode(self, *, max_decoded_bytes: int = 1 << 30, on_error: str = "null") -> Expr:
        """Encoded audio -> Audio (interleaved f32 PCM). Truncated or malformed streams and
        results over ``max_decoded_bytes`` are bad data."""
        return self._op("decode", max_decoded_bytes, on_error)

    def encode(self, format: str = "wav", sample_format: str = "s16", *, on_error: str = "null") -> Expr:  # noqa: A002
        """Audio -> WAV bytes, 16-bit PCM (``"s16"``) or 32-bit float (``"f32"``)."""
        return self._op("encode", format, sample_format, on_error)

    def resample(self, rate: int, *, on_error: str = "null") -> Expr:
        """Band-limited resampling to ``rate`` Hz."""
        return self._op("resample", rate, on_error)

    def to_mono(self, *, on_error: str = "null") -> Expr:
        """The average of all channels."""
        return self._op("to_mono", on_error)

    def standardize(self, rate: int = 16000, channels: int = 1, *, on_error: str = "null") -> Expr:
        """``channels`` at ``rate`` Hz: the input format speech models expect."""
        return self._op("standardize", rate, channels, on_error)

    def metadata(self, *, on_error: str = "null") -> Expr:
        """struct{sample_rate, channels, frames, duration_ms, codec, container}."""
        return self._op("metadata", on_error)

    def duration(self, *, on_error: str = "null") -> Expr:
        """Length in seconds."""
        return self._op("duration", on_error)

    def is_valid(self, validation: str = "metadata", max_decoded_bytes: int = 1 << 30) -> Expr:
        """True when the header reads (``"metadata"``) or the whole stream decodes (``"decode"``)."""
        return self._op("is_valid", validation, max_decoded_bytes)

    def split_by_duration(self, segment_ms: float, output: str = "waveform", *, on_error: str = "null") -> Expr:
        """A list of consecutive ``segment_ms`` pieces (``DataFrame.explode`` it): Audio, or
        with ``output="ref"`` clip references ``{uri, start_ms, end_ms}`` that copy nothing
        (the audio operators decode them when asked; a clip's own segments keep their times
        in the file)."""
        return self._op("split_by_duration", float(segment_ms), output, on_error)

    def split_by_ranges(self, ranges: Any, *, on_error: str = "null") -> Expr:
        """The pieces between each ``(start_ms, end_ms)``: a column (e.g. the output of
        :meth:`detect_silence`) or a list of pairs.

        Encoded WAV, FLAC, ALAC and MP3 are decoded only from the earliest start to the
        latest end (a few packets before it rebuild the decoder's state), with the samples a
        whole decode gives; AAC and Vorbis are decoded whole.

        >>> import numpy as np, rillet as rl
        >>> df = rl.from_pydict({"a": [(np.zeros((16000, 1), np.float32), 16000)]})
        >>> pieces = df.select(rl.col("a").audio.split_by_ranges([(0, 250), (500, 1000)]).alias("p"))
        >>> [len(samples) for samples, rate in pieces.to_pydict()["p"][0]]
        [4000, 8000]
        """
        if isinstance(ranges, (list, tuple)):
            ranges = [float(v) for pair in ranges for v in pair]
        return _call("audio_split_by_ranges", self._e, ranges, on_error)

    def detect_silence(self, threshold_db: float = -40.0, min_silence_ms: float = 300.0, *,
                       on_error: str = "null") -> Expr:
        """Silent stretches as a list of ``{start_ms, end_ms}``."""
        return self._op("detect_silence", float(threshold_db), float(min_silence_ms), on_error)

    def mel_spectrogram(self, n_mels: int = 80, n_fft: int = 400, hop: int = 160, *, on_error: str = "null") -> Expr:
        """Whisper-style log-mel features, a Tensor[f32] of shape ``[n_mels, frames]``."""
        return self._op("mel_spectrogram", n_mels, n_fft, hop, on_error)


class FileNamespace:
    """Operators on ``File`` references, paths and bytes (SQL: ``file_<name>``).

    >>> import rillet as rl
    >>> df = rl.from_pydict({"b": [b"%PDF-1.7 ...", b"\\x89PNG\\r\\n\\x1a\\n", b"hello"]})
    >>> df.select(rl.col("b").file.mime_type().alias("m")).to_pydict()
    {'m': ['application/pdf', 'image/png', 'text/plain']}
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def read(self, *, on_error: str = "null") -> Expr:
        """The bytes behind the reference (its byte range only, when it has one)."""
        return _call("file_read", self._e, on_error)

    def mime_type(self, *, on_error: str = "null") -> Expr:
        """The media type sniffed from the first bytes of the content."""
        return _call("file_mime_type", self._e, on_error)


class PdfNamespace:
    """PDF operators on paths, ``File`` references or bytes (SQL: ``pdf_<name>``). Text comes
    from the pages' text layer; a malformed document gives null with a reason (or follows
    ``on_error``)."""

    def __init__(self, expr: Expr):
        self._e = expr

    def page_count(self, *, on_error: str = "null") -> Expr:
        """Pages in the document."""
        return _call("pdf_page_count", self._e, on_error)

    def pages(self, *, on_error: str = "null") -> Expr:
        """``list<struct{page, text}>``, pages numbered from 1: ``DataFrame.explode`` it for
        one row per page (the row's other columns are kept on each page)."""
        return _call("pdf_pages", self._e, on_error)

    def text(self, *, on_error: str = "null") -> Expr:
        """The whole document's text, pages separated by form feeds (``\\f``)."""
        return _call("pdf_text", self._e, on_error)


class UrlNamespace:
    """Operators on URL strings (SQL: ``url_<name>``)."""

    def __init__(self, expr: Expr):
        self._e = expr

    def download(self, *, on_error: str = "null") -> Expr:
        """The bytes at each URL (``http(s)://``, ``s3://``, ``file://`` or a path), fetched
        concurrently with connection reuse and bounded retries. A missing object gives null
        with a reason; an unreachable server fails the job, naming the URL."""
        return _call("url_download", self._e, on_error)


class VideoNamespace:
    """Video operators through FFmpeg; each is also a SQL function (``video_<name>``).

    Inputs are paths, ``File`` references or encoded bytes. Rows that cannot be read (not a
    video, no video stream, truncated) follow ``on_error`` as in :class:`ImageNamespace`.
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def _op(self, name: str, *options: Any) -> Expr:
        return _call(f"video_{name}", self._e, *options)

    def metadata(self, *, on_error: str = "null") -> Expr:
        """struct{width, height, fps, duration_ms, frame_count, codec, audio_codec,
        audio_sample_rate, streams}, from the headers (no frame decoded)."""
        return self._op("metadata", on_error)

    def split(self, segment_ms: float, *, on_error: str = "null") -> Expr:
        """Clip references ``{uri, start_ms, end_ms}`` every ``segment_ms``; copies nothing.
        :meth:`frames` and the audio operators decode a clip's stretch of the file."""
        return self._op("split", float(segment_ms), on_error)

    def frames(self, selector: str = "interval", interval_ms: float = 1000, max_frames: int = 0, *,
               max_decoded_bytes: int = 1 << 30, on_error: str = "null") -> Expr:
        """Frames as RGB images, a list of ``{pts_ms, image}``: ``DataFrame.explode`` it for one
        frame per row. ``selector`` is ``"interval"`` (every ``interval_ms``), ``"keyframes"``
        or ``"all"``; ``max_frames`` (0: no limit) stops decoding early.

        The input may be a ``Clip`` (``{uri, start_ms, end_ms}``, e.g. from :meth:`split`):
        then only the frames shown from ``start_ms`` up to ``end_ms`` are kept (intervals
        counted from ``start_ms``; ``pts_ms`` stays the time in the file), and MP4 and
        Matroska files are read from the key frame before the clip, not from the start."""
        return self._op("frames", selector, float(interval_ms), max_frames, max_decoded_bytes, on_error)

    def extract_frames(self, selector: str = "interval", interval_ms: float = 1000, max_frames: int = 0, *,
                       max_decoded_bytes: int = 1 << 30, on_error: str = "null") -> Expr:
        """The same frames as :meth:`frames`, as a list of images in one row."""
        return self._op("extract_frames", selector, float(interval_ms), max_frames, max_decoded_bytes, on_error)

    def audio(self, *, max_decoded_bytes: int = 1 << 30, on_error: str = "null") -> Expr:
        """The audio track as Audio."""
        return self._op("audio", max_decoded_bytes, on_error)


class TextNamespace:
    """Text operators, native; each is also a SQL function (``text_<name>``).

    >>> import rillet as rl
    >>> df = rl.from_pydict({"t": ["  Hello\u00a0  World ", "mail me: bob@example.com"]})
    >>> df.select(rl.col("t").text.normalize(form="NFKC", lowercase=True).alias("n"),
    ...           rl.col("t").text.mask_pii().alias("m")).to_pydict()
    {'n': ['hello world', 'mail me: bob@example.com'], 'm': ['  Hello\xa0  World ', 'mail me: [EMAIL]']}
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def normalize(self, form: str = "NFC", lowercase: bool = False, collapse_whitespace: bool = True) -> Expr:
        """Unicode normalisation (NFC, NFD, NFKC, NFKD), optional lower-casing, whitespace runs collapsed."""
        return _call("text_normalize", self._e, form, lowercase, collapse_whitespace)

    def chunk(self, size: int, overlap: int = 0, unit: str = "chars") -> Expr:
        """A list of chunks of at most ``size`` chars / words / sentences (``unit``), with
        ``overlap``; ``DataFrame.explode`` it for one row per chunk."""
        return _call("text_chunk", self._e, size, overlap, unit)

    def stats(self) -> Expr:
        """struct{chars, words, lines, alpha_ratio, digit_ratio, whitespace_ratio,
        special_ratio, duplicate_line_ratio}."""
        return _call("text_stats", self._e)

    def content_hash(self) -> Expr:
        """64-bit XXH3 of the UTF-8 bytes (exact duplicates)."""
        return _call("text_content_hash", self._e)

    def minhash(self, num_perm: int = 64, ngram: int = 5, seed: int = 1) -> Expr:
        """MinHash signature of word n-gram shingles (near duplicates)."""
        return _call("text_minhash", self._e, num_perm, ngram, seed)

    def language(self) -> Expr:
        """struct{language (ISO 639-3, e.g. ``"eng"``), name, confidence, reliable}."""
        return _call("text_language", self._e)

    def tokenize(self, tokenizer: str = "o200k_base", *, add_special_tokens: bool = False,
                 on_error: str = "null") -> Expr:
        """Token ids (``list<uint32>``) under ``tokenizer``: a Hugging Face ``tokenizer.json``
        path (or a directory holding one; padding and truncation are turned off), or an
        OpenAI encoding built in (``o200k_base``, ``cl100k_base``, ``p50k_base``,
        ``r50k_base``) or model name (``gpt-4o``).

        >>> import rillet as rl
        >>> df = rl.from_pydict({"t": ["tiktoken is great!"]})
        >>> df.select(rl.col("t").text.tokenize("cl100k_base").alias("ids")).to_pydict()
        {'ids': [[83, 1609, 5963, 374, 2294, 0]]}
        """
        return _call("text_tokenize", self._e, tokenizer, add_special_tokens, on_error)

    def count_tokens(self, tokenizer: str = "o200k_base", *, add_special_tokens: bool = False,
                     on_error: str = "null") -> Expr:
        """How many tokens ``tokenize`` would give (``int64``)."""
        return _call("text_count_tokens", self._e, tokenizer, add_special_tokens, on_error)

    def mask_pii(self, kinds: Iterable[str] = ("email", "phone", "ip", "card")) -> Expr:
        """Replace e-mails, phone numbers, IPv4 addresses and (Luhn-valid) card numbers."""
        return _call("text_mask_pii", self._e, ",".join(kinds))


class VectorNamespace:
    """Vector operators over embeddings or lists of numbers (SQL: ``vector_<name>``).

    >>> import numpy as np, rillet as rl
    >>> df = rl.from_pydict({"a": [np.array([1.0, 0.0], np.float32)], "b": [np.array([1.0, 1.0], np.float32)]})
    >>> round(df.select(rl.col("a").vector.cosine_similarity(rl.col("b")).alias("c")).to_pydict()["c"][0], 4)
    0.7071
    """

    def __init__(self, expr: Expr):
        self._e = expr

    def cosine_similarity(self, other: Any) -> Expr:
        """Cosine similarity with another vector column or a literal list."""
        return _call("vector_cosine_similarity", self._e, other)

    def dot(self, other: Any) -> Expr:
        """The dot product with ``other`` (a vector column or a literal vector of the same
        dimension; different dimensions are an error)."""
        return _call("vector_dot", self._e, other)

    def l2_distance(self, other: Any) -> Expr:
        """The Euclidean distance to ``other`` (of the same dimension)."""
        return _call("vector_l2_distance", self._e, other)

    def normalize(self) -> Expr:
        """Scale to unit L2 length."""
        return _call("vector_normalize", self._e)
