//! GGUF reader: parses the header, metadata and tensor infos of a memory-mapped
//! (or in-memory) file, validates every tensor's extent, and hands out
//! zero-copy slices of tensor data.
//!
//! Versions: v3 and v2 are read (their layouts are identical for little-endian
//! files; v3 only added big-endian variants). v1 used 32-bit counts and is
//! rejected, as are big-endian files (their version reads byte-swapped).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::cursor::Cursor;
use crate::dequant;
use crate::error::{GgufError, Result};
use crate::value::{Array, Value, ValueType};
use crate::GgmlType;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when the file has no
/// `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are rejected; bounds recursion (stack) on
/// hostile files. Real files use at most one level of nesting.
pub const MAX_ARRAY_DEPTH: usize = 16;

/// Smallest encoding of one key/value pair: key length (8) + value type (4) + 1-byte value.
const MIN_KV_SIZE: u64 = 13;
/// Smallest encoding of one tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 24;

/// Where a tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Shape in numpy / PyTorch order (slowest dimension first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

enum Backing {
    Mapped(Mmap),
    Shared(Arc<[u8]>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Shared(b) => b,
        }
    }
}

/// A parsed, validated GGUF file. Every tensor listed is known to lie inside
/// the file, aligned and without overlapping another.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    ///
    /// The file must not be modified while the `GgufFile` is alive (as with any
    /// mmap); the atomic `GgufWriter::write_to_path` replaces files by rename,
    /// which leaves existing maps intact.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let backing = if len == 0 {
            // mmap of an empty file fails on some platforms; parse reports truncation.
            Backing::Shared(Arc::from(Vec::new()))
        } else {
            // SAFETY: read-only map; see the doc comment about concurrent modification.
            Backing::Mapped(unsafe { Mmap::map(&file) }.map_err(io_err)?)
        };
        Self::parse(backing)
    }

    /// Parses an in-memory file (tests, fuzzing, network buffers).
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Self> {
        Self::parse(Backing::Shared(bytes.into()))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let parsed = parse_layout(backing.bytes())?;
        Ok(GgufFile {
            backing,
            version: parsed.version,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            key_index: index_of(parsed.metadata.iter().map(|(k, _)| k)),
            metadata: parsed.metadata,
            tensor_index: index_of(parsed.tensors.iter().map(|t| &t.name)),
            tensors: parsed.tensors,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// All key/value pairs, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Any unsigned-representable integer value of `key`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key).and_then(Value::as_array)
    }

    /// Tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::TensorNotFound(name.to_owned()))
    }

    /// Absolute file offset of a tensor's data.
    pub fn tensor_file_offset(&self, name: &str) -> Result<u64> {
        Ok(self.data_start + self.tensor_info(name)?.offset)
    }

    /// Gives back this process's share of the memory pages that lie wholly inside tensor
    /// `name`'s data, for a caller that has converted the tensor into memory of its own: its
    /// resident set shrinks by the tensor's size, while the pages stay in the page cache and a
    /// later read of the tensor faults the same bytes back in. Best effort (Linux; pages of
    /// 4 KiB, the smallest there); a no-op for in-memory files.
    pub fn release_tensor_pages(&self, name: &str) -> Result<()> {
        let info = self.tensor_info(name)?;
        #[cfg(target_os = "linux")]
        if let Backing::Mapped(map) = &self.backing {
            const PAGE: u64 = 4096;
            let start = (self.data_start + info.offset).next_multiple_of(PAGE);
            let end = (self.data_start + info.offset + info.n_bytes) / PAGE * PAGE;
            if end > start {
                // SAFETY: the map is a read-only shared mapping of a file that must not change
                // while it is open (see `open`). MADV_DONTNEED only drops this process's page
                // table entries for whole pages of this tensor; any later read through an
                // existing `&[u8]` faults the identical file bytes back from the page cache, so
                // no borrowed data changes. Failure (e.g. larger pages) is harmless: ignored.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start as usize, (end - start) as usize) };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = info;
        Ok(())
    }

    /// The raw bytes of a tensor, borrowed from the map (zero-copy).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name)?;
        // Both ends were checked against the file length while parsing.
        let start = (self.data_start + info.offset) as usize;
        Ok(&self.as_bytes()[start..start + info.n_bytes as usize])
    }

    /// The tensor as `f32` values in ggml order (`dims[0]` fastest):
    /// F32, F16 and BF16 are converted, Q8_0 is dequantized. Ternary types
    /// (TQ1_0/TQ2_0) are decoded by the `ternary` crate from `tensor_bytes`.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        let bytes = self.tensor_bytes(name)?;
        match info.ggml_type {
            GgmlType::F32 => Ok(dequant::f32_from_le(bytes)),
            GgmlType::F16 => Ok(dequant::f16_to_f32(bytes)),
            GgmlType::BF16 => Ok(dequant::bf16_to_f32(bytes)),
            GgmlType::Q8_0 => Ok(dequant::q8_0_to_f32(bytes)),
            other => Err(GgufError::UnsupportedType {
                tensor: name.to_owned(),
                ggml_type: other,
                operation: "tensor_f32",
                supported: "F32, F16, BF16 and Q8_0 (read other types with tensor_bytes)",
            }),
        }
    }
}

fn index_of<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

struct Layout {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

fn parse_layout(bytes: &[u8]) -> Result<Layout> {
    let mut c = Cursor::new(bytes);
    let version = read_header(&mut c)?;
    let n_tensors = c.u64(|| "tensor count".into())?;
    let n_kv = c.u64(|| "metadata count".into())?;
    let n_kv = c.bounded_count(n_kv, MIN_KV_SIZE, || "metadata count".into())?;

    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment_of(&metadata)?;

    let n_tensors = c.bounded_count(n_tensors, MIN_TENSOR_INFO_SIZE, || "tensor count".into())?;
    let tensors = read_tensor_infos(&mut c, n_tensors, alignment)?;

    let data_start = align_up(c.pos(), alignment).ok_or_else(|| GgufError::InvalidAlignment {
        reason: format!("data section start overflows at offset {}", c.pos()),
    })?;
    check_extents(&tensors, data_start, bytes.len() as u64)?;
    Ok(Layout { version, alignment, data_start, metadata, tensors })
}

fn read_header(c: &mut Cursor) -> Result<u32> {
    if c.remaining() < 4 {
        return Err(GgufError::BadMagic { found: c.rest().to_vec() });
    }
    let magic = c.take(4, || "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic.to_vec() });
    }
    let version = c.u32(|| "version".into())?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(GgufError::UnsupportedVersion { version, hint: "v1 used 32-bit counts; re-convert the model" }),
        v if v.swap_bytes() <= 3 => {
            Err(GgufError::UnsupportedVersion { version, hint: "looks like a big-endian file; only little-endian is supported" })
        }
        _ => Err(GgufError::UnsupportedVersion { version, hint: "this reader supports v2 and v3" }),
    }
}

fn read_metadata(c: &mut Cursor, n_kv: usize) -> Result<Vec<(String, Value)>> {
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut seen = std::collections::HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let key_offset = c.pos();
        let key = c.string(|| format!("key of metadata entry {i}"))?;
        if !seen.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key, offset: Some(key_offset) });
        }
        let type_offset = c.pos();
        let type_id = c.u32(|| format!("value type of key '{key}'"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            id: type_id,
            what: format!("key '{key}'"),
            offset: type_offset,
        })?;
        let value = read_value(c, ty, &key)?;
        metadata.push((key, value));
    }
    Ok(metadata)
}

fn read_value(c: &mut Cursor, ty: ValueType, key: &str) -> Result<Value> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => {
            let offset = c.pos();
            Value::Bool(to_bool(c.array::<1>(what)?[0], key, offset)?)
        }
        ValueType::String => Value::String(c.string(what)?),
        ValueType::Array => Value::Array(read_array(c, key, 1)?),
    })
}

fn to_bool(byte: u8, key: &str, offset: u64) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(GgufError::InvalidBool { what: format!("key '{key}'"), offset, byte }),
    }
}

/// Reads `count` fixed-size elements with one bounds check.
fn fixed<T, const N: usize>(c: &mut Cursor, count: usize, key: &str, decode: fn([u8; N]) -> T) -> Result<Vec<T>> {
    let bytes = c.take(count as u64 * N as u64, || format!("array elements of key '{key}'"))?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut a = [0u8; N];
            a.copy_from_slice(chunk);
            decode(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor, key: &str, depth: usize) -> Result<Array> {
    let start = c.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep { key: key.to_owned(), offset: start, max: MAX_ARRAY_DEPTH });
    }
    let type_id = c.u32(|| format!("array element type of key '{key}'"))?;
    let elem = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        id: type_id,
        what: format!("array elements of key '{key}'"),
        offset: start,
    })?;
    let count = c.u64(|| format!("array length of key '{key}'"))?;
    let n = c.bounded_count(count, elem.min_encoded_size(), || format!("array length of key '{key}'"))?;
    Ok(match elem {
        ValueType::U8 => Array::U8(fixed(c, n, key, |[b]| b)?),
        ValueType::I8 => Array::I8(fixed(c, n, key, |[b]| b as i8)?),
        ValueType::U16 => Array::U16(fixed(c, n, key, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(c, n, key, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(c, n, key, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(c, n, key, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(c, n, key, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(c, n, key, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(c, n, key, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(c, n, key, f64::from_le_bytes)?),
        ValueType::Bool => {
            let offset = c.pos();
            let raw = fixed(c, n, key, |[b]| b)?;
            let bools = raw.iter().enumerate().map(|(i, &b)| to_bool(b, key, offset + i as u64));
            Array::Bool(bools.collect::<Result<_>>()?)
        }
        ValueType::String => {
            let mut strings = Vec::with_capacity(n);
            for i in 0..n {
                strings.push(c.string(|| format!("string {i} of array key '{key}'"))?);
            }
            Array::String(strings)
        }
        ValueType::Array => {
            let mut arrays = Vec::with_capacity(n);
            for _ in 0..n {
                arrays.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(arrays)
        }
    })
}

/// `general.alignment` must be a UINT32 power of two (as llama.cpp requires).
fn alignment_of(metadata: &[(String, Value)]) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY).map(|(_, v)| v) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(GgufError::InvalidAlignment { reason: format!("{a} is not a non-zero power of two") }),
        Some(other) => Err(GgufError::InvalidAlignment {
            reason: format!("must be UINT32, found {}", other.value_type()),
        }),
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}

fn read_tensor_infos(c: &mut Cursor, n: usize, alignment: u64) -> Result<Vec<TensorInfo>> {
    let mut tensors = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let info_offset = c.pos();
        let name = c.string(|| format!("name of tensor {i}"))?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name, offset: Some(info_offset) });
        }
        tensors.push(read_tensor_info(c, name, alignment)?);
    }
    Ok(tensors)
}

fn read_tensor_info(c: &mut Cursor, name: String, alignment: u64) -> Result<TensorInfo> {
    let invalid = |offset: u64, reason: String| GgufError::InvalidTensor { tensor: name.clone(), offset: Some(offset), reason };
    let dims_offset = c.pos();
    let n_dims = c.u32(|| format!("n_dims of tensor '{name}'"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(invalid(dims_offset, format!("{n_dims} dimensions (at most {MAX_DIMS} allowed)")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elements: u64 = 1;
    for d in 0..n_dims {
        let dim = c.u64(|| format!("dimension {d} of tensor '{name}'"))?;
        // ggml stores dims as int64_t, so the element count must fit in i64.
        n_elements = n_elements
            .checked_mul(dim)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(dims_offset, format!("element count of dims {:?}×{dim} overflows", dims)))?;
        dims.push(dim);
    }
    let type_offset = c.pos();
    let type_id = c.u32(|| format!("type of tensor '{name}'"))?;
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| GgufError::UnknownGgmlType { id: type_id, tensor: name.clone(), offset: type_offset })?;
    let row = dims.first().copied().unwrap_or(1);
    if row % ggml_type.block_size() != 0 {
        return Err(invalid(
            dims_offset,
            format!("row length {row} is not a multiple of the {ggml_type} block size {}", ggml_type.block_size()),
        ));
    }
    let n_bytes = ggml_type
        .bytes_for(n_elements)
        .ok_or_else(|| invalid(dims_offset, format!("byte size of {n_elements} {ggml_type} elements overflows")))?;
    let offset_pos = c.pos();
    let offset = c.u64(|| format!("data offset of tensor '{name}'"))?;
    if offset % alignment != 0 {
        return Err(invalid(offset_pos, format!("data offset {offset} is not a multiple of the alignment {alignment}")));
    }
    Ok(TensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes })
}

/// Every tensor must lie inside the file and no two may overlap.
fn check_extents(tensors: &[TensorInfo], data_start: u64, file_len: u64) -> Result<()> {
    // A file without tensors may end right after its infos (no padding); with
    // tensors, even empty ones, the data section must start inside the file so
    // that every tensor slice is a valid range.
    if data_start > file_len {
        if let Some(t) = tensors.first() {
            return Err(GgufError::InvalidTensor {
                tensor: t.name.clone(),
                offset: None,
                reason: format!("data section at {data_start} starts past the end of the file ({file_len} bytes)"),
            });
        }
    }
    let data_len = file_len.saturating_sub(data_start);
    let mut extents: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let end = t.offset.checked_add(t.n_bytes).filter(|&end| end <= data_len);
        let Some(end) = end else {
            return Err(GgufError::InvalidTensor {
                tensor: t.name.clone(),
                offset: None,
                reason: format!(
                    "data [{}, +{}) relative to the data section at {data_start} runs past the end of the file ({file_len} bytes)",
                    t.offset, t.n_bytes
                ),
            });
        };
        if t.n_bytes > 0 {
            extents.push((t.offset, end, &t.name));
        }
    }
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let ((_, prev_end, prev), (start, _, name)) = (pair[0], pair[1]);
        if start < prev_end {
            return Err(GgufError::InvalidTensor {
                tensor: name.to_owned(),
                offset: None,
                reason: format!("data at {start} overlaps tensor '{prev}' (which ends at {prev_end})"),
            });
        }
    }
    Ok(())
}
