//! GGUF headers: the metadata key/value pairs and the tensor directory of a GGUF
//! file, read without its tensor data. `reprise route` reads a GGUF's tokenizer and
//! chat template from here without linking candle (whose reader comes with its
//! tensor library); the engine reads its hyper-parameters from here too and the
//! tensors themselves through candle.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// `GGUF` in little-endian.
const MAGIC: u32 = 0x4655_4747;

/// Longest string or array the reader accepts (a corrupt length must not make it
/// allocate gigabytes).
const MAX_LEN: u64 = 1 << 28;

/// A GGUF header that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a GGUF header this reader understands.
    #[error("{0}")]
    Format(String),
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned integers of any width.
    U64(u64),
    /// Signed integers of any width.
    I64(i64),
    /// `f32` and `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string (invalid bytes replaced).
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(x) => Some(x),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(x) => i64::try_from(x).ok(),
            Value::I64(x) => Some(x),
            _ => None,
        }
    }

    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(x) => Some(x),
            Value::U64(x) => Some(x as f64),
            Value::I64(x) => Some(x as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions as GGUF stores them: innermost (`ne[0]`, a row's length) first.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// A GGUF file's header: its metadata and its tensor directory.
#[derive(Clone, Debug, Default)]
pub struct Gguf {
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorInfo>,
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn len(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > MAX_LEN {
            return Err(GgufError::Format(format!(
                "{what} of length {n} is implausible"
            )));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len("a string")?;
        let mut buf = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut buf)?;
        if buf.len() as u64 != n {
            return Err(GgufError::Format("the file ends inside a string".into()));
        }
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U64(u64::from(u8::from_le_bytes(self.bytes()?))),
            1 => Value::I64(i64::from(i8::from_le_bytes(self.bytes()?))),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(u8::from_le_bytes(self.bytes()?) != 0),
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.len("an array")?;
                let mut v = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return Err(GgufError::Format(format!("unknown value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let f = std::fs::File::open(path)?;
        Self::read(BufReader::new(f))
    }

    /// Reads a GGUF header (versions 2 and 3) from `r`.
    pub fn read(r: impl Read) -> Result<Self, GgufError> {
        let mut r = Reader { inner: r };
        if r.u32()? != MAGIC {
            return Err(GgufError::Format("not a GGUF file (bad magic)".into()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Format(format!(
                "GGUF version {version} is not supported (2 or 3)"
            )));
        }
        let n_tensors = r.len("the tensor count")?;
        let n_kv = r.len("the metadata count")?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            metadata.insert(key, r.value(ty, 0)?);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 8 {
                return Err(GgufError::Format(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    ggml_type,
                    offset,
                },
            );
        }
        Ok(Self { metadata, tensors })
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// An integer value.
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.get(key)?
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
    }

    /// A float value.
    pub fn f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f64().map(|x| x as f32)
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array of strings (`Err` names the key when it holds something else).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| format!("GGUF metadata {key:?} is not an array"))?;
        arr.iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("GGUF metadata {key:?} holds a non-string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(Value::as_i64)
            .collect()
    }

    /// An integer or an array of integers, per layer (`None` when absent).
    pub fn per_layer(&self, key: &str) -> Option<Vec<i64>> {
        match self.get(key)? {
            Value::Array(_) => self.ints(key),
            v => v.as_i64().map(|x| vec![x]),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds GGUF header bytes: `kv` as (key, type, value bytes) and tensors as
    /// (name, dims, type).
    pub(crate) fn header(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            b.extend(s(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, ty) in tensors {
            b.extend(s(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(0u64.to_le_bytes());
        }
        b
    }

    /// A GGUF string's bytes.
    pub(crate) fn s(x: &str) -> Vec<u8> {
        let mut b = (x.len() as u64).to_le_bytes().to_vec();
        b.extend(x.as_bytes());
        b
    }

    /// A GGUF array of strings' bytes (after the value type).
    pub(crate) fn str_array(items: &[&str]) -> Vec<u8> {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for i in items {
            b.extend(s(i));
        }
        b
    }

    #[test]
    fn reads_every_value_type_and_the_tensor_directory() {
        let bytes = header(
            &[
                ("general.architecture", 8, s("llama")),
                ("llama.block_count", 4, 16u32.to_le_bytes().to_vec()),
                ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
                ("x.i8", 1, vec![0xff]),
                ("x.u64", 10, 7u64.to_le_bytes().to_vec()),
                ("x.f64", 12, 0.5f64.to_le_bytes().to_vec()),
                ("x.bool", 7, vec![1]),
                ("tokenizer.ggml.tokens", 9, str_array(&["a", "b"])),
            ],
            &[("token_embd.weight", &[64, 100], 0)],
        );
        let g = Gguf::read(&bytes[..]).unwrap();
        assert_eq!(g.str("general.architecture"), Some("llama"));
        assert_eq!(g.usize("llama.block_count"), Some(16));
        assert_eq!(g.f32("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(g.get("x.i8").and_then(Value::as_i64), Some(-1));
        assert_eq!(g.usize("x.u64"), Some(7));
        assert_eq!(g.f32("x.f64"), Some(0.5));
        assert_eq!(g.bool("x.bool"), Some(true));
        assert_eq!(
            g.strings("tokenizer.ggml.tokens").unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(g.strings("x.u64").is_err());
        assert_eq!(g.tensors["token_embd.weight"].dims, vec![64, 100]);
    }

    #[test]
    fn refuses_what_is_not_a_gguf_header() {
        assert!(Gguf::read(&b"GGML\0\0\0\0"[..]).is_err());
        let mut bytes = header(&[("k", 8, s("v"))], &[]);
        bytes.truncate(bytes.len() - 1);
        assert!(Gguf::read(&bytes[..]).is_err(), "truncated");
        let mut huge = header(&[], &[]);
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::read(&huge[..]).is_err(), "implausible count");
    }
}
