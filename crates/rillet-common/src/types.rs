//! Multimodal logical types, carried as Arrow extension types so they survive Parquet, IPC
//! and pyarrow round trips (the extension name and metadata live in the field's metadata).
//!
//! | type | extension name | storage |
//! |---|---|---|
//! | [`ImageType`] | `rillet.image` | struct{height u32, width u32, channels u8, mode utf8, data large_binary} (HWC, row major) |
//! | [`TensorType`] | `rillet.tensor` | fixed shape: fixed_size_binary (the elements' little-endian bytes, row major); otherwise struct{data large_binary, shape list<u32>} |
//! | [`EmbeddingType`] | `rillet.embedding` | fixed_size_list<dtype, dim> |
//! | [`AudioType`] | `rillet.audio` | struct{sample_rate u32, channels u16, data large_list<f32>} (interleaved) |
//! | [`FileType`] | `rillet.file` | struct{uri utf8, offset u64?, length u64?, version utf8?, media_type utf8?} |
//! | [`ClipType`] | `rillet.clip` | struct{uri utf8, start_ms i64, end_ms i64} |
//!
//! ```
//! use rillet_common::types::{ElementType, EmbeddingType, ImageMode, ImageType, MultimodalType};
//! let field = ImageType::new(Some(ImageMode::Rgb)).field("img");
//! assert_eq!(MultimodalType::of_field(&field).unwrap().to_string(), "Image[RGB, u8]");
//! let emb = EmbeddingType::new(ElementType::F32, 384).field("emb");
//! assert_eq!(MultimodalType::of_field(&emb).unwrap().to_string(), "Embedding[f32; 384]");
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields};
use arrow_schema::ArrowError;
use arrow_schema::extension::ExtensionType;

/// The element type of tensors, embeddings and image pixels: one enum for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// unsigned 8-bit
    U8,
    /// unsigned 16-bit
    U16,
    /// unsigned 32-bit
    U32,
    /// unsigned 64-bit
    U64,
    /// signed 8-bit
    I8,
    /// signed 16-bit
    I16,
    /// signed 32-bit
    I32,
    /// signed 64-bit
    I64,
    /// IEEE half precision
    F16,
    /// IEEE single precision
    F32,
    /// IEEE double precision
    F64,
}

impl ElementType {
    /// Every element type, in declaration order.
    pub const ALL: [ElementType; 11] = [
        Self::U8,
        Self::U16,
        Self::U32,
        Self::U64,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F16,
        Self::F32,
        Self::F64,
    ];

    /// The short name (`u8`, `f32`, …) used in schemas and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::F64 => "f64",
        }
    }

    /// The Arrow primitive type holding one element.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::U8 => DataType::UInt8,
            Self::U16 => DataType::UInt16,
            Self::U32 => DataType::UInt32,
            Self::U64 => DataType::UInt64,
            Self::I8 => DataType::Int8,
            Self::I16 => DataType::Int16,
            Self::I32 => DataType::Int32,
            Self::I64 => DataType::Int64,
            Self::F16 => DataType::Float16,
            Self::F32 => DataType::Float32,
            Self::F64 => DataType::Float64,
        }
    }

    /// The element type stored as `data_type`, if it is one.
    pub fn from_arrow(data_type: &DataType) -> Option<Self> {
        Self::ALL.into_iter().find(|e| &e.arrow_type() == data_type)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ElementType {
    type Err = ArrowError;
    fn from_str(s: &str) -> Result<Self, ArrowError> {
        let lower = s.to_ascii_lowercase();
        let canonical = match lower.as_str() {
            "uint8" => "u8",
            "uint16" => "u16",
            "uint32" => "u32",
            "uint64" => "u64",
            "int8" => "i8",
            "int16" => "i16",
            "int32" => "i32",
            "int64" => "i64",
            "float16" | "half" => "f16",
            "float32" | "float" => "f32",
            "float64" | "double" => "f64",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|e| e.name() == canonical)
            .ok_or_else(|| ArrowError::InvalidArgumentError(format!(
                "unknown element type {s:?}; expected one of u8, u16, u32, u64, i8, i16, i32, i64, f16, f32, f64"
            )))
    }
}

/// Pixel layout of an image: channel meaning and pixel element type together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageMode {
    /// 8-bit grey
    L,
    /// 8-bit grey + alpha
    La,
    /// 8-bit red, green, blue
    Rgb,
    /// 8-bit red, green, blue, alpha
    Rgba,
    /// 16-bit grey
    L16,
    /// 16-bit grey + alpha
    La16,
    /// 16-bit RGB
    Rgb16,
    /// 16-bit RGBA
    Rgba16,
    /// 32-bit float RGB
    Rgb32F,
    /// 32-bit float RGBA
    Rgba32F,
}

impl ImageMode {
    /// Every mode.
    pub const ALL: [ImageMode; 10] = [
        Self::L,
        Self::La,
        Self::Rgb,
        Self::Rgba,
        Self::L16,
        Self::La16,
        Self::Rgb16,
        Self::Rgba16,
        Self::Rgb32F,
        Self::Rgba32F,
    ];

    /// The name used in schemas and the `mode` field (`"RGB"`, `"L16"`, …), as Pillow names
    /// the 8-bit ones.
    pub fn name(self) -> &'static str {
        match self {
            Self::L => "L",
            Self::La => "LA",
            Self::Rgb => "RGB",
            Self::Rgba => "RGBA",
            Self::L16 => "L16",
            Self::La16 => "LA16",
            Self::Rgb16 => "RGB16",
            Self::Rgba16 => "RGBA16",
            Self::Rgb32F => "RGB32F",
            Self::Rgba32F => "RGBA32F",
        }
    }

    /// Channels per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::L | Self::L16 => 1,
            Self::La | Self::La16 => 2,
            Self::Rgb | Self::Rgb16 | Self::Rgb32F => 3,
            Self::Rgba | Self::Rgba16 | Self::Rgba32F => 4,
        }
    }

    /// Element type of one channel value.
    pub fn element_type(self) -> ElementType {
        match self {
            Self::L | Self::La | Self::Rgb | Self::Rgba => ElementType::U8,
            Self::L16 | Self::La16 | Self::Rgb16 | Self::Rgba16 => ElementType::U16,
            Self::Rgb32F | Self::Rgba32F => ElementType::F32,
        }
    }

    /// Bytes of pixel data for an image of `width × height`.
    pub fn buffer_len(self, width: usize, height: usize) -> usize {
        width * height * self.channels() * self.element_type().size()
    }
}

impl fmt::Display for ImageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageMode {
    type Err = ArrowError;
    fn from_str(s: &str) -> Result<Self, ArrowError> {
        let upper = s.to_ascii_uppercase();
        Self::ALL
            .into_iter()
            .find(|m| m.name() == upper)
            .ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!(
                    "unknown image mode {s:?}; expected one of {}",
                    Self::ALL.map(|m| m.name()).join(", ")
                ))
            })
    }
}

fn nullable(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, true)
}

fn required(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, false)
}

/// Same physical layout: equal types, struct children with equal names, ignoring
/// nullability and list item names (pyarrow, Parquet and DataFusion each have their own
/// habits there).
pub fn same_layout(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(a), DataType::List(b))
        | (DataType::LargeList(a), DataType::LargeList(b)) => {
            same_layout(a.data_type(), b.data_type())
        }
        (DataType::FixedSizeList(a, n), DataType::FixedSizeList(b, m)) => {
            n == m && same_layout(a.data_type(), b.data_type())
        }
        (DataType::Struct(a), DataType::Struct(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(a, b)| a.name() == b.name() && same_layout(a.data_type(), b.data_type()))
        }
        (a, b) => a == b,
    }
}

fn expect_storage(name: &str, expected: &DataType, found: &DataType) -> Result<(), ArrowError> {
    if same_layout(expected, found) {
        Ok(())
    } else {
        Err(ArrowError::InvalidArgumentError(format!(
            "{name} is stored as {expected}, not {found}"
        )))
    }
}

fn json_metadata(
    metadata: Option<&str>,
) -> Result<serde_json::Map<String, serde_json::Value>, ArrowError> {
    match metadata {
        None | Some("") => Ok(Default::default()),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(ArrowError::InvalidArgumentError(format!(
                "extension metadata must be a JSON object, not {text:?}"
            ))),
        },
    }
}

fn json_element_type(
    map: &serde_json::Map<String, serde_json::Value>,
    type_name: &str,
) -> Result<ElementType, ArrowError> {
    map.get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("{type_name} metadata lacks \"dtype\""))
        })?
        .parse()
}

/// A decoded image column. `mode` is the column's mode when every row has it; `None`
/// means rows may differ (each row records its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageType {
    mode: Option<ImageMode>,
}

impl ImageType {
    /// An image type with a known mode, or of mixed modes.
    pub fn new(mode: Option<ImageMode>) -> Self {
        Self { mode }
    }

    /// The column's mode, if all rows share it.
    pub fn mode(&self) -> Option<ImageMode> {
        self.mode
    }

    /// The storage struct.
    pub fn storage_type() -> DataType {
        DataType::Struct(Self::storage_fields())
    }

    /// The storage struct's fields.
    pub fn storage_fields() -> Fields {
        Fields::from(vec![
            required("height", DataType::UInt32),
            required("width", DataType::UInt32),
            required("channels", DataType::UInt8),
            required("mode", DataType::Utf8),
            required("data", DataType::LargeBinary),
        ])
    }

    /// A nullable field of this type.
    pub fn field(self, name: &str) -> Field {
        nullable(name, Self::storage_type()).with_extension_type(self)
    }
}

impl ExtensionType for ImageType {
    const NAME: &'static str = "rillet.image";
    type Metadata = Option<ImageMode>;

    fn metadata(&self) -> &Self::Metadata {
        &self.mode
    }

    fn serialize_metadata(&self) -> Option<String> {
        Some(match self.mode {
            Some(mode) => serde_json::json!({ "mode": mode.name() }).to_string(),
            None => "{}".to_string(),
        })
    }

    fn deserialize_metadata(metadata: Option<&str>) -> Result<Self::Metadata, ArrowError> {
        let map = json_metadata(metadata)?;
        map.get("mode")
            .and_then(|m| m.as_str())
            .map(ImageMode::from_str)
            .transpose()
    }

    fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
        expect_storage(Self::NAME, &Self::storage_type(), data_type)
    }

    fn try_new(data_type: &DataType, mode: Self::Metadata) -> Result<Self, ArrowError> {
        let image = Self { mode };
        image.supports_data_type(data_type)?;
        Ok(image)
    }
}

/// An n-dimensional array per row, with a column-wide element type and, optionally, a
/// shape shared by every row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    dtype: ElementType,
    shape: Option<Vec<usize>>,
}

/// Metadata of [`TensorType`]: element type and optional fixed shape.
pub type TensorMetadata = (ElementType, Option<Vec<usize>>);

impl TensorType {
    /// A tensor type; `shape` fixed for every row, or `None` for per-row shapes.
    pub fn new(dtype: ElementType, shape: Option<Vec<usize>>) -> Self {
        Self { dtype, shape }
    }

    /// Element type.
    pub fn dtype(&self) -> ElementType {
        self.dtype
    }

    /// The shape shared by every row, if fixed.
    pub fn shape(&self) -> Option<&[usize]> {
        self.shape.as_deref()
    }

    /// The storage type for `dtype` and `shape`.
    ///
    /// A row's elements are one buffer of little-endian bytes in row-major order, like an
    /// image's pixels: a tensor is read and written whole, never element by element. (As a
    /// list of numbers, Parquet writes a repetition and a definition level per element: a
    /// 320×320×3 u8 tensor took ten times longer to write than the same bytes as one value.)
    ///
    /// ```
    /// use arrow::datatypes::DataType;
    /// use rillet_common::types::{ElementType, TensorType};
    /// let fixed = TensorType::storage_type_of(ElementType::F32, Some(&[2, 3]));
    /// assert_eq!(fixed, DataType::FixedSizeBinary(24));
    /// ```
    pub fn storage_type_of(dtype: ElementType, shape: Option<&[usize]>) -> DataType {
        match shape {
            Some(shape) => {
                DataType::FixedSizeBinary((shape.iter().product::<usize>() * dtype.size()) as i32)
            }
            None => DataType::Struct(Fields::from(vec![
                required("data", DataType::LargeBinary),
                required(
                    "shape",
                    DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
                ),
            ])),
        }
    }

    /// A nullable field of this type.
    pub fn field(self, name: &str) -> Field {
        nullable(
            name,
            Self::storage_type_of(self.dtype, self.shape.as_deref()),
        )
        .with_extension_type(self)
    }
}

// ExtensionType wants `metadata()` to return a reference; keep the pair alongside.
impl ExtensionType for TensorType {
    const NAME: &'static str = "rillet.tensor";
    type Metadata = Self;

    fn metadata(&self) -> &Self::Metadata {
        self
    }

    fn serialize_metadata(&self) -> Option<String> {
        Some(
            match &self.shape {
                Some(shape) => serde_json::json!({ "dtype": self.dtype.name(), "shape": shape }),
                None => serde_json::json!({ "dtype": self.dtype.name() }),
            }
            .to_string(),
        )
    }

    fn deserialize_metadata(metadata: Option<&str>) -> Result<Self::Metadata, ArrowError> {
        let map = json_metadata(metadata)?;
        let dtype = json_element_type(&map, Self::NAME)?;
        let shape = match map.get("shape") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(dims)) => Some(
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ArrowError::InvalidArgumentError(
                            "tensor shape must be a list of sizes".into(),
                        )
                    })?,
            ),
            Some(other) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "tensor shape must be a list, not {other}"
                )));
            }
        };
        Ok(Self { dtype, shape })
    }

    fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
        expect_storage(
            Self::NAME,
            &Self::storage_type_of(self.dtype, self.shape.as_deref()),
            data_type,
        )
    }

    fn try_new(data_type: &DataType, metadata: Self::Metadata) -> Result<Self, ArrowError> {
        metadata.supports_data_type(data_type)?;
        Ok(metadata)
    }
}

/// A fixed-length vector per row (model embeddings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EmbeddingType {
    dtype: ElementType,
    dim: usize,
}

impl EmbeddingType {
    /// Vectors of `dim` elements of `dtype`.
    pub fn new(dtype: ElementType, dim: usize) -> Self {
        Self { dtype, dim }
    }

    /// Element type.
    pub fn dtype(&self) -> ElementType {
        self.dtype
    }

    /// Number of elements.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The storage type.
    pub fn storage_type(&self) -> DataType {
        DataType::FixedSizeList(
            Arc::new(Field::new("item", self.dtype.arrow_type(), true)),
            self.dim as i32,
        )
    }

    /// A nullable field of this type.
    pub fn field(self, name: &str) -> Field {
        nullable(name, self.storage_type()).with_extension_type(self)
    }
}

impl ExtensionType for EmbeddingType {
    const NAME: &'static str = "rillet.embedding";
    type Metadata = Self;

    fn metadata(&self) -> &Self::Metadata {
        self
    }

    fn serialize_metadata(&self) -> Option<String> {
        Some(serde_json::json!({ "dtype": self.dtype.name(), "dim": self.dim }).to_string())
    }

    fn deserialize_metadata(metadata: Option<&str>) -> Result<Self::Metadata, ArrowError> {
        let map = json_metadata(metadata)?;
        let dtype = json_element_type(&map, Self::NAME)?;
        let dim = map.get("dim").and_then(|d| d.as_u64()).ok_or_else(|| {
            ArrowError::InvalidArgumentError("rillet.embedding metadata lacks \"dim\"".into())
        })?;
        Ok(Self {
            dtype,
            dim: dim as usize,
        })
    }

    fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
        match data_type {
            DataType::FixedSizeList(item, n)
                if *n as usize == self.dim && item.data_type() == &self.dtype.arrow_type() =>
            {
                Ok(())
            }
            other => Err(ArrowError::InvalidArgumentError(format!(
                "rillet.embedding is stored as {}, not {other}",
                self.storage_type()
            ))),
        }
    }

    fn try_new(data_type: &DataType, metadata: Self::Metadata) -> Result<Self, ArrowError> {
        metadata.supports_data_type(data_type)?;
        Ok(metadata)
    }
}

macro_rules! unit_extension_type {
    ($(#[$doc:meta])* $name:ident, $ext:literal, $fields:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name;

        impl $name {
            /// The storage struct's fields.
            pub fn storage_fields() -> Fields {
                Fields::from($fields)
            }

            /// The storage struct.
            pub fn storage_type() -> DataType {
                DataType::Struct(Self::storage_fields())
            }

            /// A nullable field of this type.
            pub fn field(self, name: &str) -> Field {
                nullable(name, Self::storage_type()).with_extension_type(self)
            }
        }

        impl ExtensionType for $name {
            const NAME: &'static str = $ext;
            type Metadata = ();

            fn metadata(&self) -> &Self::Metadata {
                &()
            }

            fn serialize_metadata(&self) -> Option<String> {
                Some("{}".to_string())
            }

            fn deserialize_metadata(_metadata: Option<&str>) -> Result<Self::Metadata, ArrowError> {
                Ok(())
            }

            fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
                expect_storage(Self::NAME, &Self::storage_type(), data_type)
            }

            fn try_new(data_type: &DataType, _metadata: ()) -> Result<Self, ArrowError> {
                $name.supports_data_type(data_type)?;
                Ok($name)
            }
        }
    };
}

unit_extension_type!(
    /// Decoded audio: interleaved f32 PCM samples in [-1, 1] with their rate and channel count.
    AudioType,
    "rillet.audio",
    vec![
        required("sample_rate", DataType::UInt32),
        required("channels", DataType::UInt16),
        required("data", DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, true)))),
    ]
);

unit_extension_type!(
    /// A reference to content that is fetched only when an operator needs it: a local path
    /// or `s3://` / `http(s)://` URL, an optional byte range, the version (etag) seen when
    /// it was listed, and a media type when known.
    FileType,
    "rillet.file",
    vec![
        required("uri", DataType::Utf8),
        nullable("offset", DataType::UInt64),
        nullable("length", DataType::UInt64),
        nullable("version", DataType::Utf8),
        nullable("media_type", DataType::Utf8),
    ]
);

unit_extension_type!(
    /// A time range of an audio or video object: `{uri, start_ms, end_ms}`.
    ClipType,
    "rillet.clip",
    vec![
        required("uri", DataType::Utf8),
        required("start_ms", DataType::Int64),
        required("end_ms", DataType::Int64),
    ]
);

/// Any of Rillet's multimodal types, for code that dispatches on a field's type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultimodalType {
    /// [`ImageType`]
    Image(ImageType),
    /// [`TensorType`]
    Tensor(TensorType),
    /// [`EmbeddingType`]
    Embedding(EmbeddingType),
    /// [`AudioType`]
    Audio,
    /// [`FileType`]
    File,
    /// [`ClipType`]
    Clip,
}

impl MultimodalType {
    /// The multimodal type of `field`, if its metadata names one of Rillet's extension types
    /// (and its storage matches).
    pub fn of_field(field: &Field) -> Option<Self> {
        Some(match field.extension_type_name()? {
            ImageType::NAME => Self::Image(field.try_extension_type::<ImageType>().ok()?),
            TensorType::NAME => Self::Tensor(field.try_extension_type::<TensorType>().ok()?),
            EmbeddingType::NAME => {
                Self::Embedding(field.try_extension_type::<EmbeddingType>().ok()?)
            }
            AudioType::NAME => field
                .try_extension_type::<AudioType>()
                .ok()
                .map(|_| Self::Audio)?,
            FileType::NAME => field
                .try_extension_type::<FileType>()
                .ok()
                .map(|_| Self::File)?,
            ClipType::NAME => field
                .try_extension_type::<ClipType>()
                .ok()
                .map(|_| Self::Clip)?,
            _ => return None,
        })
    }

    /// A nullable field of this type named `name`.
    pub fn field(&self, name: &str) -> Field {
        match self {
            Self::Image(t) => t.field(name),
            Self::Tensor(t) => t.clone().field(name),
            Self::Embedding(t) => t.field(name),
            Self::Audio => AudioType.field(name),
            Self::File => FileType.field(name),
            Self::Clip => ClipType.field(name),
        }
    }
}

impl fmt::Display for MultimodalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(t) => match t.mode() {
                Some(mode) => write!(f, "Image[{mode}, {}]", mode.element_type()),
                None => f.write_str("Image[mixed]"),
            },
            Self::Tensor(t) => match t.shape() {
                Some(shape) => write!(
                    f,
                    "Tensor[{}; {}]",
                    t.dtype(),
                    shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("×")
                ),
                None => write!(f, "Tensor[{}]", t.dtype()),
            },
            Self::Embedding(t) => write!(f, "Embedding[{}; {}]", t.dtype(), t.dim()),
            Self::Audio => f.write_str("Audio"),
            Self::File => f.write_str("File"),
            Self::Clip => f.write_str("Clip"),
        }
    }
}

/// The media type conventionally meant by a path's extension, if it is a common one.
///
/// ```
/// assert_eq!(rillet_common::types::media_type_of_path("a/b.JPG"), Some("image/jpeg"));
/// assert_eq!(rillet_common::types::media_type_of_path("notes"), None);
/// ```
pub fn media_type_of_path(path: &str) -> Option<&'static str> {
    let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" | "oga" => "audio/ogg",
        "m4a" => "audio/mp4",
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" | "jsonl" => "application/json",
        "csv" => "text/csv",
        "parquet" => "application/vnd.apache.parquet",
        _ => return None,
    })
}

/// A field's type as users read it: the multimodal name for Rillet's extension types,
/// Arrow's otherwise.
///
/// ```
/// use arrow::datatypes::{DataType, Field};
/// use rillet_common::types::{display_type, FileType};
/// assert_eq!(display_type(&FileType.field("f")), "File");
/// assert_eq!(display_type(&Field::new("n", DataType::Int64, true)), "Int64");
/// ```
pub fn display_type(field: &Field) -> String {
    match MultimodalType::of_field(field) {
        Some(t) => t.to_string(),
        None => field.data_type().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_survives_its_metadata_round_trip() {
        let types = vec![
            MultimodalType::Image(ImageType::new(Some(ImageMode::Rgba16))),
            MultimodalType::Image(ImageType::new(None)),
            MultimodalType::Tensor(TensorType::new(ElementType::F16, Some(vec![3, 224, 224]))),
            MultimodalType::Tensor(TensorType::new(ElementType::I64, None)),
            MultimodalType::Embedding(EmbeddingType::new(ElementType::F32, 384)),
            MultimodalType::Audio,
            MultimodalType::File,
            MultimodalType::Clip,
        ];
        for t in types {
            let field = t.field("x");
            assert_eq!(MultimodalType::of_field(&field), Some(t.clone()), "{t}");
        }
    }

    #[test]
    fn names_read_well() {
        let tensor =
            MultimodalType::Tensor(TensorType::new(ElementType::F32, Some(vec![3, 224, 224])));
        assert_eq!(tensor.to_string(), "Tensor[f32; 3×224×224]");
        assert_eq!(
            MultimodalType::Image(ImageType::new(None)).to_string(),
            "Image[mixed]"
        );
        assert_eq!("float32".parse::<ElementType>().unwrap(), ElementType::F32);
        assert!(
            "q7".parse::<ElementType>()
                .unwrap_err()
                .to_string()
                .contains("u8")
        );
        assert_eq!("rgb".parse::<ImageMode>().unwrap(), ImageMode::Rgb);
    }

    #[test]
    fn mismatched_storage_is_not_the_type() {
        let field = Field::new("x", DataType::Int32, true).with_metadata(
            [(
                arrow_schema::extension::EXTENSION_TYPE_NAME_KEY.to_string(),
                "rillet.image".to_string(),
            )]
            .into(),
        );
        assert_eq!(MultimodalType::of_field(&field), None);
    }
}
